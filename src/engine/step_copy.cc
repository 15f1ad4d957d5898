// Phase InitialCopy: the publication, the initial copy (pgshift's own under an exported
// snapshot, or the subscription's copy_data), the subscription, and the wait until every table
// replicates.
#include "engine/migration.h"

#include <algorithm>
#include <future>
#include <map>
#include <thread>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/copy.h"
#include "engine/inspect.h"
#include "engine/post_data.h"
#include "engine/preflight.h"
#include "engine/replication_health.h"
#include "engine/server_ops.h"
#include "engine/snapshot_keeper.h"
#include "engine/verify.h"
#include "engine/wal_retention.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

// How long a snapshot keeper holds its snapshot once pgshift stopped touching the heartbeat
// (killed, stopped and not resumed): past this, a resumed run copies the database again.
constexpr int kKeeperHoldSeconds = 3600;
// The post-data ledger on the target (post_data.h).
constexpr const char kPostDataLedger[] = "_pgshift.post_data_done";

std::string Rate(double bytes_per_s) { return FormatBytes(bytes_per_s) + "/s"; }

}  // namespace

std::string Migration::WorkFile(const std::string& name) const {
  return (dir_.empty() ? std::string(".") : dir_) + "/" + name;
}

std::string Migration::KeeperFile(const DatabaseState& db) const {
  return WorkFile("keeper-" + state_.SubscriptionName(db) + ".json");
}

int Migration::CopyJobs(pg::Connection& target) {
  if (state_.options.copy_jobs > 0) return state_.options.copy_jobs;
  // The target's cores, where the role may read them (superuser or pg_read_server_files);
  // else this machine's.
  auto n = target.QueryValue(
      "SELECT count(*) FROM regexp_split_to_table(pg_read_file('/proc/cpuinfo'), E'\\n') AS l "
      "WHERE l ~ '^processor'");
  long long cores = 0;
  if (n.ok() && ParseInt64(*n, &cores) && cores > 0) return static_cast<int>(std::min(cores, 64LL));
  return std::max(2u, std::min(64u, std::thread::hardware_concurrency()));
}

void Migration::PublishCopyProgress(const DatabaseState& db, const CopyProgress& p) {
  const int64_t at = MonotonicMillis();
  stats_.Update([&](StatsSnapshot& st) {
    DatabaseStats& d = st.databases[db.name];
    d.bytes_total = {static_cast<double>(p.bytes_total), at};
    d.bytes_copied = {static_cast<double>(std::min(p.bytes_done, p.bytes_total)), at};
    d.rows_copied = {static_cast<double>(p.rows), at};
    d.tables_total = {static_cast<double>(p.tables_total), at};
    d.tables_synced = {static_cast<double>(p.tables_done), at};
    d.ranges_total = {static_cast<double>(p.ranges_total), at};
    d.ranges_done = {static_cast<double>(p.ranges_done), at};
  });
}

Status Migration::RunCopy(const DatabaseState& db, const CopyPlan& plan, int jobs, bool resumed,
                          PostDataBuilder* post) {
  CopyOptions o{state_.source_dsn, state_.target_dsn, db.name, jobs, state_.options.copy_rate};
  PGSHIFT_ASSIGN_OR_RETURN(std::unique_ptr<ParallelCopy> pc, ParallelCopy::Start(o, plan));
  CopyProgress first = pc->Progress();
  Progress("copy " + db.name + ": " + std::to_string(first.tables_total) + " tables in " +
           std::to_string(first.ranges_total) + " ranges, " + FormatBytes(first.bytes_total) +
           ", " + std::to_string(jobs) + " jobs, binary for " +
           std::to_string(first.binary_tables) + " of " + std::to_string(first.tables_total) +
           " tables" +
           (state_.options.copy_rate > 0 ? ", at most " + Rate(state_.options.copy_rate) : "") +
           (resumed ? "; resuming: " + std::to_string(first.ranges_done) + " ranges were done"
                    : ""));
  const std::string heartbeat = WorkFile("keeper.heartbeat");
  const int64_t started = MonotonicMillis();
  int64_t last_report = started;
  bool stopped = false;
  while (!pc->Finished()) {
    const int64_t now = MonotonicMillis();
    // Indexes of a table whose rows are all there are built while the rest copies.
    for (const auto& [table, bytes] : pc->TakeFinishedTables()) {
      if (post) post->TableReady(table, bytes);
    }
    CopyProgress p = pc->Progress();
    PublishCopyProgress(db, p);
    if (now - last_heartbeat_ms_ >= 1000) {
      TouchHeartbeat(heartbeat);
      last_heartbeat_ms_ = now;
    }
    MaybeSampleStats();
    PGSHIFT_RETURN_IF_ERROR(GuardWal());
    if (now - last_report >= 5000) {
      double rate = static_cast<double>(p.bytes_streamed) / std::max<double>(1, now - started) * 1000;
      Progress("copy " + db.name + ": " + FormatBytes(p.bytes_done) + " of " +
               FormatBytes(p.bytes_total) + ", " + std::to_string(p.ranges_done) + " of " +
               std::to_string(p.ranges_total) + " ranges, " + std::to_string(p.rows) + " rows, " +
               Rate(rate));
      last_report = now;
    }
    if (p.ranges_done > first.ranges_done && p.ranges_done < p.ranges_total) {
      FaultPointForTest("copy-in-flight");
    }
    if (!stopped && stop_ && stop_()) {
      pc->Stop();
      stopped = true;
    }
    SleepMillis(100);
  }
  Status s = pc->Wait();
  for (const auto& [table, bytes] : pc->TakeFinishedTables()) {
    if (post) post->TableReady(table, bytes);
  }
  CopyProgress p = pc->Progress();
  PublishCopyProgress(db, p);
  if (!s.ok()) return s;
  const double secs = std::max<double>(1, MonotonicMillis() - started) / 1000;
  Progress("copy " + db.name + " done: " + std::to_string(p.rows - first.rows) + " rows, " +
           FormatBytes(p.bytes_streamed) + " streamed in " + Ms(secs * 1000) + " ms (" +
           Rate(p.bytes_streamed / secs) + ")");
  return Status::Ok();
}

Status Migration::BuildPostData(const DatabaseState& db, PostDataBuilder& post) {
  Progress("indexes and constraints of " + db.name + ": " + std::to_string(post.done()) + " of " +
           std::to_string(post.total()) + " built during the copy; building the rest");
  const int64_t started = MonotonicMillis();
  // In a thread: the live figures and history keep their pulse while indexes build. It cannot
  // be stopped half way; a stop request is honoured once it is done.
  auto done = std::async(std::launch::async, [&post] { return post.Finish(); });
  int64_t last_report = started;
  while (done.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    // The copy's figures (published by RunCopy, when it ran in this process) still hold.
    const int64_t now = MonotonicMillis();
    stats_.Update([&](StatsSnapshot& st) {
      DatabaseStats& d = st.databases[db.name];
      for (Measured* m : {&d.bytes_total, &d.bytes_copied, &d.rows_copied, &d.tables_total,
                          &d.tables_synced, &d.ranges_total, &d.ranges_done}) {
        if (m->at_ms >= 0) m->at_ms = now;
      }
    });
    MaybeSampleStats();
    PGSHIFT_RETURN_IF_ERROR(GuardWal());
    if (now - last_report >= 5000) {
      Progress("indexes and constraints of " + db.name + ": " + std::to_string(post.done()) +
               " of " + std::to_string(post.total()));
      last_report = now;
    }
  }
  Status s = done.get();
  if (!s.ok()) return s.WithContext("schema of database " + db.name + ": post-data");
  Progress("indexes and constraints of " + db.name + " built in " +
           Ms(static_cast<double>(MonotonicMillis() - started)) + " ms after the copy" +
           (post.not_valid() > 0
                ? " (" + std::to_string(post.not_valid()) +
                      " NOT VALID constraints among them, added after the rows as on the source)"
                : ""));
  return Status::Ok();
}

Status Migration::CopyDatabase(DatabaseState& db, int jobs) {
  const std::string slot = state_.SubscriptionName(db);
  const std::string keeper_file = KeeperFile(db);
  // The post-data script is dumped while the slot and the plan are made, and its builder
  // started before the copy, so indexes are built while the copy runs.
  PGSHIFT_ASSIGN_OR_RETURN(std::string sdsn, pg::DsnForDatabase(state_.source_dsn, db.name));
  PGSHIFT_ASSIGN_OR_RETURN(std::string tdsn, pg::DsnForDatabase(state_.target_dsn, db.name));
  std::future<Result<std::string>> script;
  if (!db.post_data_done) {
    script = std::async(std::launch::async, [this, sdsn, tdsn] {
      return DumpSchema(sdsn, tdsn, tools_, SchemaSection::kPostData);
    });
  }
  std::unique_ptr<PostDataBuilder> post;
  auto start_post = [&]() -> Status {
    if (!script.valid()) return Status::Ok();
    Result<std::string> text = script.get();
    if (!text.ok()) return text.status().WithContext("schema of database " + db.name);
    PostDataOptions po;
    po.jobs = jobs;
    po.ledger_table = kPostDataLedger;
    auto started = PostDataBuilder::Start(*text, tdsn, po);
    if (!started.ok()) return started.status().WithContext("target " + db.name + ": post-data");
    post = std::move(*started);
    return Status::Ok();
  };
  if (!db.copy_done) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_RETURN_IF_ERROR(EnsureCopyTables(*dst));
    PGSHIFT_ASSIGN_OR_RETURN(CopyPlan plan, LoadPlan(*dst));
    bool resumed = false;
    if (!plan.empty() && plan.slot == slot && !plan.AllDone()) {
      // A copy was interrupted: its snapshot still exists while its keeper lives.
      auto probe = OpenSnapshotSession(state_.source_dsn, db.name, plan.snapshot, "");
      resumed = probe.ok();
      if (!resumed) {
        Progress("copy " + db.name + ": the snapshot of the interrupted copy is gone (" +
                 probe.status().message() + "); copying " + db.name +
                 " again from the start, under a new snapshot");
        state_.notes.push_back(db.name + ": the initial copy was started over (its snapshot "
                               "was gone when pgshift resumed)");
      }
    }
    if (plan.empty() || (!resumed && !plan.AllDone())) {
      // A keeper that made its slot before a crash that came before any plan was stored.
      std::optional<SnapshotKeeperInfo> keeper = FindSnapshotKeeper(keeper_file);
      if (keeper && (!plan.empty() || keeper->slot != slot ||
                     !OpenSnapshotSession(state_.source_dsn, db.name, keeper->snapshot, "").ok())) {
        keeper.reset();
      }
      if (!keeper) {
        StopSnapshotKeeper(keeper_file);
        PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*src, slot));
        SnapshotKeeperRequest req;
        PGSHIFT_ASSIGN_OR_RETURN(req.source_db_dsn, pg::DsnForDatabase(state_.source_dsn, db.name));
        req.password = src->Password();
        req.slot = slot;
        req.info_file = keeper_file;
        req.heartbeat_file = WorkFile("keeper.heartbeat");
        req.log_file = WorkFile("keeper.log");
        req.hold_s = kKeeperHoldSeconds;
        Progress("copy " + db.name + ": creating slot " + slot + " with an exported snapshot");
        auto started = StartSnapshotKeeper(req);
        if (!started.ok()) return started.status().WithContext("source " + db.name);
        keeper = *started;
      }
      last_heartbeat_ms_ = MonotonicMillis();
      PGSHIFT_ASSIGN_OR_RETURN(
          ConnPtr snap, OpenSnapshotSession(state_.source_dsn, db.name, keeper->snapshot, ""));
      PGSHIFT_ASSIGN_OR_RETURN(
          plan, MakePlan(*snap, *dst, db.tables, jobs, slot, keeper->snapshot, keeper->lsn));
    }
    PGSHIFT_RETURN_IF_ERROR(start_post());
    if (!plan.AllDone()) PGSHIFT_RETURN_IF_ERROR(RunCopy(db, plan, jobs, resumed, post.get()));
    // The copy's sessions commit without waiting for the WAL flush; this commit waits
    // (synchronous_commit = on), and with it every commit before it is on disk.
    PGSHIFT_RETURN_IF_ERROR(dst->Exec("UPDATE _pgshift.copy_run SET finished_at = now()"));
    db.copy_done = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
    StopSnapshotKeeper(keeper_file);
  }
  PGSHIFT_RETURN_IF_ERROR(start_post());
  if (post) {
    PGSHIFT_RETURN_IF_ERROR(BuildPostData(db, *post));
    db.post_data_done = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  return Status::Ok();
}

Status Migration::StepInitialCopy() {
  std::optional<int> jobs;
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    std::string pub = state_.PublicationName(db);
    std::string sub = state_.SubscriptionName(db);
    // The publication comes before the slot: decoding looks it up as of each change's time.
    if (!Exists(*src, kHasPublication, pub)) {
      PGSHIFT_ASSIGN_OR_RETURN(auto tables, ListTables(*src));
      std::vector<std::string> names;
      for (const auto& t : tables) {
        if (!IsMigrated(t)) continue;
        std::string q = src->QuoteIdent(t.schema) + "." + src->QuoteIdent(t.name);
        if (!t.replica_identity_usable) {
          if (state_.options.tables_without_pk != TablesWithoutPk::kFull) {
            return Status::FailedPrecondition("table " + t.QualifiedName() +
                                              " has no primary key or replica identity");
          }
          // Both sides: the target needs it too for reverse replication.
          PGSHIFT_RETURN_IF_ERROR(src->Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
          PGSHIFT_RETURN_IF_ERROR(dst->Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
          state_.notes.push_back(db.name + ": " + t.QualifiedName() + " set to REPLICA IDENTITY FULL");
        }
        names.push_back(q);
      }
      names.push_back("_pgshift.marker");
      db.tables = names;
      PGSHIFT_RETURN_IF_ERROR(Save());
      // The DDL log too, from the start: a subscription refreshed later would wait behind
      // whatever its apply worker waits for (ddl_carry.h).
      PGSHIFT_RETURN_IF_ERROR(src->Exec("CREATE PUBLICATION " + src->QuoteIdent(pub) +
                                        " FOR TABLE " + Join(names, ", ") + ", _pgshift.ddl_log")
                                  .WithContext("source " + db.name + ": publication"));
    }
    if (!Exists(*dst, kHasSubscription, sub)) {
      const bool own_copy = state_.options.copy == CopyMethod::kSnapshot;
      if (own_copy) {
        if (!jobs) jobs = CopyJobs(*dst);
        // The rows are on the target and the slot starts where they end.
        PGSHIFT_RETURN_IF_ERROR(CopyDatabase(db, *jobs));
      } else if (Exists(*src, kHasSlot, sub)) {
        // A slot without its subscription is what a crash between the two leaves behind.
        PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*src, sub));
      }
      PGSHIFT_ASSIGN_OR_RETURN(std::string conninfo,
                               SubscriptionConnInfo(state_.source_dsn, db.name, *src));
      // Native: the marker row is replicated by the copy like everything else.
      Status s = dst->Exec("CREATE SUBSCRIPTION " + dst->QuoteIdent(sub) + " CONNECTION " +
                           dst->QuoteLiteral(conninfo) + " PUBLICATION " + dst->QuoteIdent(pub) +
                           (own_copy ? " WITH (copy_data = false, create_slot = false, "
                                     : " WITH (copy_data = true, ") +
                           // A 17+ subscriber sets its slot's failover to this value.
                           (FailoverSlots(src->ServerMajor()) && FailoverSlots(dst->ServerMajor())
                                ? "failover = true, "
                                : "") +
                           "slot_name = " + dst->QuoteLiteral(sub) + ")");
      if (!s.ok()) return s.WithContext("target " + db.name + ": subscription");
      FaultPointForTest("after-subscription");
      Progress("replication started: " + db.name + " (" + std::to_string(db.tables.size()) +
               " tables)");
    }
  }
  // Wait for every table's initial copy; a table whose copy keeps failing ends the wait.
  int64_t last_report = 0;
  while (true) {
    int ready = 0, total = 0;
    for (const auto& db : state_.databases) {
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
      PGSHIFT_ASSIGN_OR_RETURN(SyncCounts c, SubscriptionSync(*dst, state_.SubscriptionName(db)));
      ready += c.ready;
      total += c.total;
      PGSHIFT_RETURN_IF_ERROR(watch_.Observe(*dst, db.name, state_.SubscriptionName(db)));
    }
    if (total > 0 && ready == total) break;
    MaybeSampleStats();
    PGSHIFT_RETURN_IF_ERROR(GuardWal());
    if (MonotonicMillis() - last_report > 2000) {
      Progress("initial copy: " + std::to_string(ready) + "/" + std::to_string(total) +
               " tables ready");
      last_report = MonotonicMillis();
    }
    PGSHIFT_RETURN_IF_ERROR(Wait(250));
  }
  // Only now may constraints the source never checked its rows against exist on the target.
  PGSHIFT_RETURN_IF_ERROR(ApplyNotValidConstraints());
  Progress("initial copy done: every table is replicating");
  // Whatever the throttle: the history and the metrics show the finished copy.
  (void)SampleStats();
  return Move(Phase::kCatchingUp);
}

}  // namespace pgshift::engine
