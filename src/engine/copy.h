// pgshift's own initial copy of one database (CopyMethod::kSnapshot).
//
// Every table of the publication is read under one exported snapshot (snapshot_keeper.h), so
// the copy is the source exactly as of the replication slot's consistent point. Tables are cut
// into ranges: pages (`ctid` ranges, served by a TID range scan, PostgreSQL 14 and later) or,
// on older sources, ranges of a one-column primary key; small tables are one range. N jobs,
// each a session on both sides, take ranges biggest first and stream `COPY ... TO STDOUT` into
// `COPY ... FROM STDIN` (pg/copy_pipe.h: bounded memory), in binary where both sides have the
// same built-in types and encoding, in text otherwise.
//
// The plan and its progress live on the target, in _pgshift.copy_run (the snapshot and slot)
// and _pgshift.copy_range (one row per range). A range's rows and its row's `done = true`
// commit in one transaction, so every range is on the target exactly once, whatever crashes
// when: a resumed copy under the same snapshot does only the ranges not done. A new plan
// (a new snapshot) truncates what an older one had copied.
//
// Target sessions skip user triggers and foreign key checks (session_replication_role =
// replica where the role may set it) and commit without waiting for the WAL flush; the copy
// ends with one flushed commit, so everything it reports done is durable.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"
#include "pg/copy_pipe.h"

namespace pgshift::engine {

struct CopyRange {
  enum class Kind { kAll, kPages, kKey };
  int id = 0;
  std::string schema;
  std::string table;
  Kind kind = Kind::kAll;
  std::string key_column;             // kKey
  std::optional<std::string> lo, hi;  // kPages: block numbers; kKey: key values; nullopt: open
  int64_t est_bytes = 0;              // the range's share of the table's size on the source
  bool done = false;
  int64_t rows = 0;                   // when done
};

// The WHERE condition that selects `r`'s rows ("" for kAll), quoted for `c`.
std::string RangePredicate(const CopyRange& r, const pg::Connection& c);

// The size ranges aim at: about 8 per job over the whole database, within [8 MiB, 1 GiB].
int64_t RangeBytes(int64_t total_bytes, int jobs);
// Ranges of pages for a table of `bytes` bytes in `blocks` pages; the first and last are open,
// so pages added after the size was read are covered too.
std::vector<CopyRange> SplitByPages(const std::string& schema, const std::string& table,
                                    int64_t bytes, int64_t blocks, int64_t range_bytes);
// Ranges between the sorted, distinct key values `bounds`; the first and last are open.
std::vector<CopyRange> SplitByKey(const std::string& schema, const std::string& table,
                                  int64_t bytes, const std::string& key,
                                  const std::vector<std::string>& bounds);

struct CopyPlan {
  std::string slot;
  std::string snapshot;
  std::string lsn;
  std::vector<CopyRange> ranges;
  bool empty() const { return snapshot.empty(); }
  bool AllDone() const;
};

// pgshift's bookkeeping tables on the target (_pgshift must exist).
Status EnsureCopyTables(pg::Connection& target);
// The plan stored on the target; empty when there is none.
Result<CopyPlan> LoadPlan(pg::Connection& target);

// Opens a source session inside `snapshot`: REPEATABLE READ, read only, output settings
// pinned, client_encoding `encoding`. Fails when the snapshot is gone.
Result<std::unique_ptr<pg::Connection>> OpenSnapshotSession(const std::string& source_dsn,
                                                            const std::string& db,
                                                            const std::string& snapshot,
                                                            const std::string& encoding);

// Plans the copy of `tables` (quoted, schema-qualified) for `jobs` jobs, reading sizes and key
// bounds in `source` (a snapshot session), and stores it on the target in one transaction
// that first truncates every table an earlier plan had copied into.
Result<CopyPlan> MakePlan(pg::Connection& source, pg::Connection& target,
                          const std::vector<std::string>& tables, int jobs,
                          const std::string& slot, const std::string& snapshot,
                          const std::string& lsn);

struct CopyOptions {
  std::string source_dsn;
  std::string target_dsn;
  std::string database;
  int jobs = 2;
  int64_t rate = 0;  // bytes/s read from the source, all jobs together; 0: no limit
};

struct CopyProgress {
  int64_t bytes_total = 0;  // the plan's estimate (tables' size on the source)
  int64_t bytes_done = 0;   // estimate of done ranges, plus what is streaming, capped per range
  int64_t bytes_streamed = 0;  // COPY stream bytes this run
  int64_t rows = 0;            // rows of done ranges
  int ranges_total = 0;
  int ranges_done = 0;
  int tables_total = 0;
  int tables_done = 0;
  int binary_tables = 0;  // tables copied in binary format
};

// A token bucket the jobs share: together they read at most `bytes_per_s` from the source
// (0: no limit). Idle time earns no credit, so there is no burst after a pause. Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(int64_t bytes_per_s) : rate_(bytes_per_s) {}
  // Books `n` bytes and returns when (MonotonicMicros) they may go; `now_us` is the clock.
  int64_t Reserve(size_t n, int64_t now_us);
  // Waits until `n` more bytes fit; false when `abort` turned true meanwhile.
  bool Acquire(size_t n, const std::atomic<bool>& abort);

 private:
  const int64_t rate_;
  std::mutex mu_;
  int64_t next_ = 0;  // when the next bytes may go
};

// Runs the ranges of a plan that are not done, with `jobs` threads. Thread-safe: Progress()
// and Stop() from any thread.
class ParallelCopy {
 public:
  static Result<std::unique_ptr<ParallelCopy>> Start(const CopyOptions& options,
                                                     const CopyPlan& plan);
  ~ParallelCopy();
  ParallelCopy(const ParallelCopy&) = delete;
  ParallelCopy& operator=(const ParallelCopy&) = delete;

  // True once every job ended (all done, or an error or Stop ended them).
  bool Finished() const { return running_.load() == 0; }
  // Makes every job end soon; ranges in flight are rolled back (redone by a resumed run).
  void Stop() { abort_.store(true); }
  // Waits for the jobs; the first error (Aborted after Stop), or Ok when every range is done.
  Status Wait();
  CopyProgress Progress() const;
  // Tables whose every range is done since the last call (all such tables on the first call),
  // quoted ("schema"."name"), with their size on the source.
  std::vector<std::pair<std::string, int64_t>> TakeFinishedTables();

 private:
  struct Table {
    std::string quoted;   // "schema"."table"
    std::string columns;  // quoted column list, the same on both sides
    bool binary = false;
    int ranges_left = 0;
    int64_t bytes = 0;
  };
  struct Slot {  // what one job streams now, for Progress()
    std::atomic<int64_t> streamed{0};
    std::atomic<int64_t> est{0};
  };
  explicit ParallelCopy(CopyOptions options);
  Status Describe(const CopyPlan& plan);
  void Job(int index);
  // Copies `batch` in one target transaction that marks them done.
  Status CopyRanges(pg::Connection& src, pg::Connection& dst,
                    const std::vector<const CopyRange*>& batch, Slot& slot);
  Result<pg::CopyPipeResult> CopyOne(pg::Connection& src, pg::Connection& dst,
                                     const CopyRange& r, bool freeze, Slot& slot);
  void Fail(const Status& s);

  CopyOptions options_;
  std::string snapshot_;
  std::string encoding_;
  int source_major_ = 0;
  std::vector<CopyRange> todo_;  // biggest first
  std::map<std::string, Table> tables_;  // by "schema\0table"
  std::unique_ptr<RateLimiter> limiter_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> next_{0};
  std::atomic<int> running_{0};
  std::atomic<bool> abort_{false};  // Stop(): end now
  std::atomic<bool> drain_{false};  // an error: finish what is in flight, take nothing new

  mutable std::mutex mu_;  // guards the fields below and tables_[].ranges_left
  Status first_error_;
  CopyProgress progress_;
  std::vector<std::pair<std::string, int64_t>> finished_;
};

}  // namespace pgshift::engine
