// The cutover executor: runs a table of steps (rows), each with do, undo and observe, and
// decides after a failure or a crash whether to roll forward or back. It knows nothing of
// servers or routers: cutover_steps.cc builds the real table, and the unit tests a fake one.
//
// The rules (pg_auto_failover's "states do nothing, transitions act", applied to one cutover):
//   1. Before a row acts, its index is written to the journal (the state); the row acts only
//      once that write returned. So the journal is an upper bound on what may have happened.
//      Inside the clients' pause, the rows before the point of no return are covered by the
//      point of no return's own entry, written before the pause starts: a recovery from it
//      observes the switch (rule 2), and rolling back undoes those rows anyway (rule 3).
//   2. Exactly one row is the point of no return (the router switch). A failure or crash at a
//      row before it rolls back; after it, rolls forward. At the row itself the executor asks
//      the row's observe() whether clients may already reach the new side: then forward, else
//      back. If it cannot tell, it stops and says so (kStuck): both servers stay fenced.
//   3. Rolling back undoes rows from the failed one (at least from the one before the point of
//      no return; from the last one when the point of no return's observation sent it back)
//      down to the first, each only if observe()
//      does not show it as not done (rows without observe are undone anyway: undo must be
//      idempotent). Rolling forward redoes rows from the failed one on, each unless observe()
//      shows it done, and first re-checks the rows before it that keep an effect (ensure).
//   4. Undo and redo are retried; a row that still fails does not stop the others (best
//      effort, so clients are never left paused), but the outcome is then kStuck and the
//      journal stays, so the next run recovers again.
// Safety never depends on the executor alone: the rows that open a server check that the
// other one is fenced (cutover_steps.cc).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace pgshift::engine {

// How far a row's effect is in place on the live system.
enum class Progress { kNotDone, kPartly, kDone };

struct Observation {
  Progress progress = Progress::kNotDone;
  // Only for the point-of-no-return row: clients may already reach (or on reconnecting will
  // reach) the new side.
  bool clients_may_be_on_new_side = false;
  std::string detail;  // for people
};

struct CutoverRow {
  std::string name;
  // Between pause and resume: its time counts as the clients' pause, and rows up to the point
  // of no return are not started once the pause budget ran out.
  bool in_pause = false;
  bool point_of_no_return = false;  // exactly one row in a table
  // Its effect must still hold when the cutover completes (fence, stopped subscription,
  // switch): rolling forward after a crash re-checks it with observe() and redoes it.
  bool ensure = false;
  // Runs after the outcome was committed, best effort, never undone, never journaled (drain).
  bool after_commit = false;
  // Its undo runs even when the executor cannot decide a direction (kStuck at the point of no
  // return): the pause, so that clients are never left held. Safe because both servers are
  // fenced then: released clients get errors, never a split.
  bool release_when_stuck = false;
  std::function<Status()> act;
  std::function<Status()> undo;                  // empty: nothing to undo
  std::function<Result<Observation>()> observe;  // empty: no live trace; the journal decides
};

// The executor's record in the migration state, written before each row acts.
struct CutoverJournal {
  int row = -1;          // the row about to act, or acting; -1: unknown (an older state file)
  std::string row_name;  // its name, for people
  bool undoing = false;  // rolling back (for people; decisions come from row and observe)
};

enum class CutoverOutcome {
  kCompleted,  // every row done: clients on the new side
  kUndone,     // every row undone: clients on the old side
  kStuck,      // neither (see cause); the journal stays for the next run
};

struct CutoverReport {
  CutoverOutcome outcome = CutoverOutcome::kStuck;
  Status cause;            // why it was undone or is stuck; Ok when completed cleanly
  std::string failed_row;  // the row whose failure (or crash) started the undo
  bool recovered = false;  // ran as a recovery after a crash
  std::vector<std::pair<std::string, double>> rows_ms;  // each row's do, as it ran
  double pause_ms = 0;             // from the first in-pause row's start to the last one's end
  double journal_ms = 0;           // of pause_ms, writing the journal between rows
  std::vector<std::string> notes;  // what rolled forward or back, and any best-effort failure
};

struct CutoverCallbacks {
  // Writes the journal (REQUIRED); a failure stops the row before it acts. `durable` is true
  // for the entries a crash of the machine (or, in the operator, of the process) must find:
  // the rows outside the pause, and the point of no return's, which is written before the
  // pause starts. The others (inside the pause, after the switch) may be lost: a recovery from
  // the switch's entry observes where clients go and rolls forward or undoes every row, so
  // no write inside the clients' pause has to wait for an fsync or an API server.
  std::function<Status(const CutoverJournal&, bool durable)> journal;
  // Makes the outcome (kCompleted or kUndone) durable and clears the journal (REQUIRED).
  std::function<Status(CutoverOutcome, const CutoverReport&)> commit;
  // True once the clients' pause ran over its budget.
  std::function<bool()> over_budget;
  // True when a stop was requested: rolling forward then stops at the next row (kStuck).
  std::function<bool()> stop;
  std::function<void(const std::string&)> progress;
  // Test hook, called at "before-<row>", "after-<row>", "undo-<row>" and, once an undo was
  // saved, "undone". Production code
  // kills the process there (PGSHIFT_FAULT_KILL_AT); a unit test returns true, and the
  // executor then returns at once, as a process killed there would (nothing more runs).
  std::function<bool(const std::string&)> fault_point_for_test;
  // How many times undo and redo try a row, and the sleep between tries.
  int tries = 3;
  std::function<void(int64_t ms)> sleep;
};

// Runs the table from its first row. Returns an error only when a test fault point stopped it.
Result<CutoverReport> RunCutover(const std::vector<CutoverRow>& rows, const CutoverCallbacks& cb);

// Finishes a cutover a crash interrupted at `journal.row`: observes, then rolls forward past
// the point of no return or back before it (rules 2-4 above).
Result<CutoverReport> RecoverCutover(const std::vector<CutoverRow>& rows,
                                     const CutoverJournal& journal, const CutoverCallbacks& cb);

}  // namespace pgshift::engine
