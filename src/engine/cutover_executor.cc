#include "engine/cutover_executor.h"

#include <algorithm>

#include "common/clock.h"

namespace pgshift::engine {

namespace {

// A test fault point stopped the executor: the process "died" there.
Status KilledForTest(const std::string& point) {
  return Status::Aborted("stopped at fault point " + point + " (test)");
}

class Executor {
 public:
  Executor(const std::vector<CutoverRow>& rows, const CutoverCallbacks& cb) : rows_(rows), cb_(cb) {
    main_end_ = static_cast<int>(rows_.size());
    for (int i = 0; i < static_cast<int>(rows_.size()); ++i) {
      if (rows_[i].point_of_no_return) ponr_ = i;
      if (rows_[i].after_commit && main_end_ == static_cast<int>(rows_.size())) main_end_ = i;
    }
  }

  Result<CutoverReport> Run() {
    if (ponr_ < 0) return Status::Internal("cutover table without a point of no return");
    for (int i = 0; i < main_end_; ++i) {
      const CutoverRow& row = rows_[i];
      if (row.in_pause && i <= ponr_ && cb_.over_budget && cb_.over_budget()) {
        return Resolve(
            i, Status::DeadlineExceeded("the pause ran over --max-pause before step " + row.name));
      }
      const int64_t journal_start = MonotonicMicros();
      Status j = Journal(i, false);
      if (pause_start_us_ >= 0 && row.in_pause) {
        report_.journal_ms += (MonotonicMicros() - journal_start) / 1000.0;
      }
      if (!j.ok()) return Resolve(i, j.WithContext("writing the journal before step " + row.name));
      if (Fault("before-" + row.name)) return KilledForTest("before-" + row.name);
      Status s = Act(row);
      if (Fault("after-" + row.name)) return KilledForTest("after-" + row.name);
      if (!s.ok()) return Resolve(i, s);
    }
    return Complete();
  }

  Result<CutoverReport> Recover(const CutoverJournal& journal) {
    if (ponr_ < 0) return Status::Internal("cutover table without a point of no return");
    report_.recovered = true;
    // The row by its name: the order of the rows may differ between the process that wrote
    // the journal and this one (an older version; a router that switches early opens the new
    // side before the switch), their names do not. Else by its index; an older state file
    // has neither: let the router's view decide, as at the switch.
    int row = -1;
    for (int i = 0; i < main_end_ && !journal.row_name.empty(); ++i) {
      if (rows_[i].name == journal.row_name) row = i;
    }
    if (row < 0) row = journal.row >= 0 && journal.row < main_end_ ? journal.row : ponr_;
    reached_ = row;
    return Resolve(row, Status::Aborted("interrupted at step " + rows_[row].name));
  }

 private:
  bool Fault(const std::string& point) {
    return cb_.fault_point_for_test && cb_.fault_point_for_test(point);
  }

  void Note(const std::string& line) {
    report_.notes.push_back(line);
    if (cb_.progress) cb_.progress(line);
  }

  // Before the pause starts, the entry of the point of no return is written (synced) in place
  // of the first in-pause row's: recovering from it observes the switch, which rolls back
  // exactly as an entry of an earlier row would when the switch has not happened (a rollback
  // undoes every row from the one before the switch down anyway). So no synced write is left
  // inside the clients' pause, and the in-pause rows before the switch write nothing: their
  // entries could only lower that bound. The rows after the switch inside the pause are
  // written unsynced: a recovery that finds the switch's entry observes where clients go.
  Status Journal(int row, bool undoing) {
    const CutoverRow& at = rows_[row];
    if (at.in_pause && row < ponr_ && rows_[ponr_].observe) row = ponr_;
    if (row <= reached_ && !undoing && journaled_) return Status::Ok();
    reached_ = std::max(reached_, row);
    const CutoverRow& r = rows_[reached_];
    const bool durable = !r.in_pause || reached_ == ponr_;
    journaled_ = true;
    return cb_.journal(CutoverJournal{reached_, r.name, undoing}, durable);
  }

  // One do of `row`, timed; the pause is measured from the first in-pause row to the last.
  Status Act(const CutoverRow& row) {
    const int64_t start = MonotonicMicros();
    if (row.in_pause && pause_start_us_ < 0) pause_start_us_ = start;
    Status s = row.act ? row.act() : Status::Ok();
    const int64_t end = MonotonicMicros();
    report_.rows_ms.emplace_back(row.name, (end - start) / 1000.0);
    if (row.in_pause) report_.pause_ms = (end - pause_start_us_) / 1000.0;
    return s;
  }

  bool Stopping() const { return cb_.stop && cb_.stop(); }

  // `f` up to cb_.tries times, sleeping a little longer after each failure.
  Status Retry(const std::function<Status()>& f) {
    Status s;
    for (int t = 1; t <= std::max(1, cb_.tries); ++t) {
      s = f();
      if (s.ok() || Stopping() || t == cb_.tries) break;
      if (cb_.sleep) cb_.sleep(100 * t * t);
    }
    return s;
  }

  Result<Observation> Observe(const CutoverRow& row) {
    Result<Observation> o = Status::Internal("step " + row.name + " cannot be observed");
    for (int t = 1; t <= std::max(1, cb_.tries); ++t) {
      o = row.observe();
      if (o.ok() || t == cb_.tries) break;
      if (cb_.sleep) cb_.sleep(100 * t * t);
    }
    return o;
  }

  // After a failure (or crash) at row `at`: forward past the point of no return, back before
  // it, and at it whatever the live system says.
  Result<CutoverReport> Resolve(int at, Status cause) {
    report_.failed_row = rows_[at].name;
    report_.cause = cause;
    if (at > ponr_) return Forward(at);
    if (at < ponr_) return Back(at);
    const CutoverRow& ponr = rows_[ponr_];
    if (!ponr.observe) return Stuck("step " + ponr.name + " cannot be observed");
    auto o = Observe(ponr);
    if (!o.ok()) {
      for (int j = at; j >= 0; --j) {
        if (rows_[j].release_when_stuck && rows_[j].undo) (void)Retry(rows_[j].undo);
      }
      return Stuck("cannot tell whether clients may already reach the new side (" +
                   o.status().message() + "); both servers stay fenced until a new run can");
    }
    Note("step " + ponr.name + ": " + o->detail);
    if (o->clients_may_be_on_new_side) return Forward(at);
    return Back(at);
  }

  Result<CutoverReport> Forward(int from) {
    Note("rolling forward from step " + rows_[from].name + " (" + report_.cause.message() + ")");
    std::vector<std::string> errors;
    for (int j = 0; j < main_end_; ++j) {
      const CutoverRow& row = rows_[j];
      if (j < from && !(row.ensure && row.observe)) continue;
      if (j >= from) {
        Status js = Journal(j, false);
        if (!js.ok()) {
          errors.push_back(js.message());
          break;  // no row acts without its journal entry
        }
      }
      if (Fault("before-" + row.name)) return KilledForTest("before-" + row.name);
      bool done = false;
      if (row.observe) {
        auto o = row.observe();
        done = o.ok() && o->progress == Progress::kDone;
      }
      Status s = done ? Status::Ok() : Retry([&] { return Act(row); });
      if (Fault("after-" + row.name)) return KilledForTest("after-" + row.name);
      if (!s.ok()) {
        errors.push_back(row.name + ": " + s.message());
        // Stopped on request (the manual router's wait): leave the rest for the next run.
        if (s.code() == StatusCode::kAborted && Stopping()) break;
      }
    }
    if (!errors.empty()) {
      return Stuck("rolled forward, but not all of it: " + Join(errors));
    }
    return Complete();
  }

  Result<CutoverReport> Back(int from) {
    Note("rolling back from step " + rows_[from].name + " (" + report_.cause.message() + ")");
    // The journal already covers `from`; this only says an undo is under way. Undoing goes on
    // even if it cannot be written: every undo is safe to repeat.
    (void)Journal(from, true);
    std::vector<std::string> errors;
    // Before the switch, from its previous row down: a journal entry lost to a crash of the
    // machine (not synced, see CutoverCallbacks::journal) must not leave a row done. Back from
    // the switch itself (it did not happen, says its observation), from the last row down: the
    // rows after it inside the pause write no synced entry, so whatever of them ran is undone.
    const int start = from >= ponr_ ? main_end_ - 1 : std::max(from, ponr_ - 1);
    for (int j = start; j >= 0; --j) {
      const CutoverRow& row = rows_[j];
      if (!row.undo) continue;
      if (Fault("undo-" + row.name)) return KilledForTest("undo-" + row.name);
      if (row.observe) {
        auto o = row.observe();
        if (o.ok() && o->progress == Progress::kNotDone) continue;
        // A row past `from` has no journal entry: only a crash of the machine could have hidden
        // that it ran. When its side cannot be read (that server is down), it is left as it
        // most likely is, not run, so the rows that bring clients back are not held up by it.
        if (!o.ok() && j > from) {
          Note("step " + row.name + " not checked (" + o.status().message() +
               "); it never started, so it is left as it is");
          continue;
        }
      }
      Status s = Retry(row.undo);
      if (!s.ok()) errors.push_back(row.name + ": " + s.message());
    }
    if (!errors.empty()) return Stuck("rolled back, but not all of it: " + Join(errors));
    report_.outcome = CutoverOutcome::kUndone;
    Status c = cb_.commit(CutoverOutcome::kUndone, report_);
    if (!c.ok()) return Stuck("undone, but not saved: " + c.message());
    if (Fault("undone")) return KilledForTest("undone");
    return report_;
  }

  Result<CutoverReport> Complete() {
    report_.outcome = CutoverOutcome::kCompleted;
    Status c = cb_.commit(CutoverOutcome::kCompleted, report_);
    if (!c.ok()) return Stuck("completed, but not saved: " + c.message());
    for (int j = main_end_; j < static_cast<int>(rows_.size()); ++j) {
      if (Fault("before-" + rows_[j].name)) return KilledForTest("before-" + rows_[j].name);
      Status s = Act(rows_[j]);
      if (!s.ok()) Note("step " + rows_[j].name + " (after the cutover was saved): " + s.message());
    }
    return report_;
  }

  Result<CutoverReport> Stuck(const std::string& why) {
    report_.outcome = CutoverOutcome::kStuck;
    report_.cause = Status::Unavailable(why);
    Note(why);
    return report_;
  }

  static std::string Join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : "; ") + s;
    return out;
  }

  const std::vector<CutoverRow>& rows_;
  const CutoverCallbacks& cb_;
  int ponr_ = -1;
  int main_end_ = 0;
  int reached_ = -1;
  bool journaled_ = false;  // an entry was written by this executor
  int64_t pause_start_us_ = -1;
  CutoverReport report_;
};

}  // namespace

Result<CutoverReport> RunCutover(const std::vector<CutoverRow>& rows, const CutoverCallbacks& cb) {
  return Executor(rows, cb).Run();
}

Result<CutoverReport> RecoverCutover(const std::vector<CutoverRow>& rows,
                                     const CutoverJournal& journal, const CutoverCallbacks& cb) {
  return Executor(rows, cb).Recover(journal);
}

}  // namespace pgshift::engine
