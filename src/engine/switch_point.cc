#include "engine/switch_point.h"

#include "common/clock.h"

namespace pgshift::engine {

Result<std::unique_ptr<SwitchPointCheck>> SwitchPointCheck::Prepare(const std::string& source_dsn,
                                                                    const std::string& target_dsn,
                                                                    VerifyOptions options) {
  if (options.databases.empty()) return Status::InvalidArgument("switch point: no database given");
  std::unique_ptr<SwitchPointCheck> c(new SwitchPointCheck(source_dsn, target_dsn, options));
  for (const std::string& db : c->options_.databases) {
    verify::DatabaseSessions d;
    d.database = db;
    PGSHIFT_ASSIGN_OR_RETURN(d.source, verify::OpenSession(source_dsn, db, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(d.target, verify::OpenSession(target_dsn, db, "target"));
    c->dbs_.push_back(std::move(d));
  }
  return c;
}

std::vector<int> SwitchPointCheck::Pids(bool source) const {
  std::vector<int> out;
  for (const auto& d : dbs_) {
    const pg::Connection* c = source ? d.source.get() : d.target.get();
    if (c != nullptr && !c->broken()) out.push_back(c->BackendPid());
  }
  return out;
}

Status SwitchPointCheck::Reopen() {
  for (auto& d : dbs_) {
    if (d.source == nullptr || d.source->broken()) {
      PGSHIFT_ASSIGN_OR_RETURN(d.source, verify::OpenSession(source_dsn_, d.database, "source"));
    }
    if (d.target == nullptr || d.target->broken()) {
      PGSHIFT_ASSIGN_OR_RETURN(d.target, verify::OpenSession(target_dsn_, d.database, "target"));
    }
  }
  return Status::Ok();
}

Status SwitchPointCheck::Take() {
  if (taken_) return Status::FailedPrecondition("switch point: snapshots already taken");
  const int64_t start = MonotonicMicros();
  PGSHIFT_RETURN_IF_ERROR(Reopen());
  constexpr char kExport[] =
      "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_export_snapshot()";
  // Every session at once: one round trip in all.
  Status first;
  std::vector<std::pair<pg::Connection*, std::string*>> sent;
  for (auto& d : dbs_) {
    for (auto [conn, id] : {std::pair{d.source.get(), &d.source_snapshot},
                            std::pair{d.target.get(), &d.target_snapshot}}) {
      Status s = conn->Send(kExport);
      if (s.ok()) {
        sent.emplace_back(conn, id);
      } else if (first.ok()) {
        first = s.WithContext(std::string(conn == d.source.get() ? "source" : "target") +
                              " database \"" + d.database + "\"");
      }
    }
  }
  for (auto& [conn, id] : sent) {
    auto r = conn->Receive();
    if (r.ok() && r->rows() == 1) {
      *id = r->Get(0, 0);
    } else if (first.ok()) {
      first = (r.ok() ? Status::Internal("no snapshot id") : r.status())
                  .WithContext("exporting a snapshot at the switch point");
    }
  }
  taken_ = true;
  take_ms_ = static_cast<double>(MonotonicMicros() - start) / 1000.0;
  if (!first.ok()) {
    Release();
    return first;
  }
  return Status::Ok();
}

void SwitchPointCheck::Release() {
  for (auto& d : dbs_) {
    for (auto* conn : {d.source.get(), d.target.get()}) {
      if (conn != nullptr) (void)conn->Exec("ROLLBACK");
    }
    d.source_snapshot.clear();
    d.target_snapshot.clear();
  }
  taken_ = false;
}

Result<VerifyReport> SwitchPointCheck::Compare() {
  if (!taken_ || dbs_.empty()) {
    return Status::FailedPrecondition("switch point: no snapshots to compare");
  }
  taken_ = false;
  return verify::Compare(VerifyMode::kSwitchPoint, source_dsn_, target_dsn_, std::move(dbs_),
                         options_);
}

}  // namespace pgshift::engine
