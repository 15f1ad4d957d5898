#include "engine/wal_retention.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cmath>

#include "common/strings.h"

namespace pgshift::engine {

namespace {

// A pg_settings value in bytes ("MB" and "kB" units; 8kB blocks) or seconds ("s", "min").
int64_t InUnits(const std::string& setting, const std::string& unit) {
  long long v = 0;
  if (!ParseInt64(setting, &v)) return 0;
  if (v < 0) return v;
  if (unit == "B") return v;
  if (unit == "kB") return v * 1024;
  if (unit == "8kB") return v * 8192;
  if (unit == "MB") return v * 1024 * 1024;
  if (unit == "GB") return v * 1024LL * 1024 * 1024;
  if (unit == "min") return v * 60;
  if (unit == "ms") return v / 1000;
  return v;  // "s", or no unit
}

std::string Bytes(int64_t b) { return FormatBytes(static_cast<double>(b)); }

}  // namespace

Result<WalRetentionFacts> ReadWalRetentionFacts(pg::Connection& source) {
  WalRetentionFacts f;
  f.major = source.ServerMajor();
  // pg_settings shows a row only when the role may read it (data_directory needs
  // pg_read_all_settings).
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult s,
      source.Query("SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name IN "
                   "('max_slot_wal_keep_size', 'wal_keep_size', 'wal_keep_segments', "
                   "'wal_segment_size', 'idle_replication_slot_timeout', 'data_directory', "
                   "'synchronized_standby_slots')"));
  std::string data_directory;
  int64_t segment = 16 * 1024 * 1024, keep_segments = 0;
  for (int i = 0; i < s.rows(); ++i) {
    const std::string name = s.Get(i, 0), value = s.Get(i, 1), unit = s.Get(i, 2);
    if (name == "max_slot_wal_keep_size") f.max_slot_wal_keep_bytes = InUnits(value, unit);
    if (name == "wal_keep_size") f.wal_keep_bytes = InUnits(value, unit);
    if (name == "wal_keep_segments") keep_segments = InUnits(value, unit);
    if (name == "wal_segment_size") segment = InUnits(value, unit);
    if (name == "idle_replication_slot_timeout") f.idle_slot_timeout_s = InUnits(value, unit);
    if (name == "synchronized_standby_slots") f.synchronized_standby_slots = value;
    if (name == "data_directory") data_directory = value;
  }
  if (keep_segments > 0) f.wal_keep_bytes = keep_segments * segment;
  if (auto w = source.QueryValue("SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir()"); w.ok()) {
    long long n = 0;
    if (ParseInt64(*w, &n)) f.wal_dir_bytes = n;
  }
  auto standbys = source.QueryValue(
      "SELECT count(*) FROM pg_stat_replication r WHERE NOT EXISTS (SELECT 1 FROM "
      "pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical')");
  long long n = 0;
  if (standbys.ok() && ParseInt64(*standbys, &n)) f.physical_standbys = static_cast<int>(n);

  // Free space: only when this host holds the source's data directory, proven by the same
  // directory's modification time as the server reads it.
  struct stat local;
  if (data_directory.empty()) {
    f.free_note = "pgshift's role may not read data_directory (pg_read_all_settings)";
  } else if (::stat(data_directory.c_str(), &local) != 0) {
    f.free_note = "the source's data directory is not on this host";
  } else {
    auto mtime = source.QueryValue(
        "SELECT extract(epoch FROM modification)::bigint FROM pg_stat_file('.', true)");
    long long server_mtime = 0;
    struct statvfs fs;
    if (!mtime.ok() || !ParseInt64(*mtime, &server_mtime)) {
      f.free_note = "pgshift's role may not stat the data directory (pg_stat_file)";
    } else if (server_mtime != static_cast<long long>(local.st_mtime)) {
      f.free_note = "the source's data directory is not on this host";
    } else if (::statvfs(data_directory.c_str(), &fs) == 0) {
      f.free_bytes = static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize);
    }
  }
  if (!f.free_bytes && f.free_note.empty()) f.free_note = "statvfs failed";
  return f;
}

std::vector<CheckResult> CheckWalRetention(const WalRetentionFacts& f, int64_t max_retained_wal) {
  std::vector<CheckResult> out;
  std::string figures = "pg_wal holds " + (f.wal_dir_bytes ? Bytes(*f.wal_dir_bytes)
                                                           : std::string("? (pg_ls_waldir needs pg_monitor)")) +
                        "; free on the data directory's file system: " +
                        (f.free_bytes ? Bytes(*f.free_bytes) : "unknown (" + f.free_note + ")");
  if (f.wal_keep_bytes > 0) figures += "; wal_keep_size " + Bytes(f.wal_keep_bytes);
  const std::string server_limit =
      f.major < 13 ? "no max_slot_wal_keep_size before PostgreSQL 13"
      : f.max_slot_wal_keep_bytes < 0
          ? "max_slot_wal_keep_size = -1 (unlimited)"
          : "max_slot_wal_keep_size = " + Bytes(f.max_slot_wal_keep_bytes) +
                " (past it the source drops the slot and the migration must start again)";
  const std::string ours = max_retained_wal > 0
                               ? "--max-retained-wal " + Bytes(max_retained_wal) +
                                     " (past it pgshift stops and says so)"
                               : "no --max-retained-wal";
  CheckResult r{"wal-retention", Severity::kOk, "source",
                "WAL kept for pgshift's slots: " + server_limit + ", " + ours + "; " + figures, ""};
  if (max_retained_wal <= 0 && f.max_slot_wal_keep_bytes < 0) {
    r.severity = Severity::kWarning;
    r.message = "nothing limits the WAL the source keeps for pgshift's slots (" + server_limit +
                ", " + ours + "): a target that stops applying makes the source keep WAL until "
                "its disk is full; " + figures;
    r.remedy = "run upgrade with --max-retained-wal SIZE (pgshift stops before the source is "
               "in danger; pick well under the free space above), and/or set "
               "max_slot_wal_keep_size on the source (ALTER SYSTEM SET max_slot_wal_keep_size = "
               "'50GB'; SELECT pg_reload_conf(); 13+)";
  } else if (f.free_bytes && max_retained_wal > *f.free_bytes) {
    r.severity = Severity::kWarning;
    r.message = "--max-retained-wal " + Bytes(max_retained_wal) +
                " is more than the free space of the source's data directory (" +
                Bytes(*f.free_bytes) + "): the disk may fill first; " + figures;
    r.remedy = "lower --max-retained-wal well under the free space";
  }
  out.push_back(std::move(r));
  if (f.idle_slot_timeout_s > 0) {
    out.push_back(
        {"wal-retention", Severity::kWarning, "source",
         "idle_replication_slot_timeout = " + std::to_string(f.idle_slot_timeout_s) +
             " s: a slot nobody streams from for that long is invalidated, so a target (or "
             "pgshift's copy) stopped longer ends the migration",
         "keep the target running through the migration, or raise the timeout for its "
         "duration (ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf())"});
  }
  return out;
}

std::vector<CheckResult> CheckFailoverSlots(const WalRetentionFacts& f) {
  std::vector<CheckResult> out;
  if (f.physical_standbys <= 0) return out;
  const std::string standbys =
      std::to_string(f.physical_standbys) + " physical standby(s) stream from the source";
  if (!FailoverSlots(f.major)) {
    out.push_back({"failover-slots", Severity::kWarning, "source",
                   standbys + ": before PostgreSQL 17 logical slots live on the primary only, so "
                              "if it fails over to a standby the migration must start again "
                              "(pgshift abort, then upgrade against the new primary)",
                   "avoid a planned switchover during the migration; a source on 17+ gets "
                   "failover slots (docs/engine.md, \"Failover slots\")"});
    return out;
  }
  if (f.synchronized_standby_slots.empty()) {
    out.push_back(
        {"failover-slots", Severity::kWarning, "source",
         standbys + ": pgshift's slots are made with failover = true, but "
                    "synchronized_standby_slots is empty, so the target may get changes a "
                    "standby has not received yet; promoted, that standby would be behind the "
                    "target",
         "on the source: ALTER SYSTEM SET synchronized_standby_slots = '<each standby's "
         "physical slot>'; SELECT pg_reload_conf(); on each standby: sync_replication_slots = "
         "on, hot_standby_feedback = on, primary_slot_name set, dbname in primary_conninfo"});
    return out;
  }
  out.push_back({"failover-slots", Severity::kInfo, "source",
                 standbys + ": pgshift's slots are made with failover = true and the source "
                            "waits for " + f.synchronized_standby_slots +
                            " before sending changes; a standby with sync_replication_slots = "
                            "on keeps them, so after a failover run the same command against "
                            "the new primary",
                 ""});
  return out;
}

Result<SlotRetention> ReadSlotRetention(pg::Connection& source, const std::string& slot) {
  SlotRetention r;
  r.slot = slot;
  const std::string status = source.ServerMajor() >= 13 ? "wal_status" : "''";
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult q,
      source.Query("SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, "
                   "coalesce(" + status + ", '') FROM pg_replication_slots WHERE slot_name = $1",
                   {slot}));
  if (q.rows() == 0) return r;
  r.found = true;
  long long n = 0;
  if (ParseInt64(q.Get(0, 0), &n)) r.retained_bytes = n;
  r.wal_status = q.Get(0, 1);
  return r;
}

Status GuardRetention(const SlotRetention& r, int64_t max_retained_wal, const std::string& database) {
  if (!r.found) return Status::Ok();
  if (r.wal_status == "lost") {
    return Status::FailedPrecondition(
        "replication slot " + r.slot + " of database " + database +
        " lost WAL it needed (wal_status lost: the source removed it past "
        "max_slot_wal_keep_size), so changes since then can never reach the target: run "
        "`pgshift abort` and start again");
  }
  if (max_retained_wal > 0 && r.retained_bytes > max_retained_wal) {
    return Status::FailedPrecondition(
        "the source keeps " + Bytes(r.retained_bytes) + " of WAL for replication slot " +
        r.slot + " (database " + database + "), more than --max-retained-wal " +
        Bytes(max_retained_wal) +
        "; pgshift stopped before the source's disk is in danger. The slot still holds that "
        "WAL: make the target apply again (`pgshift status` shows its lag and workers) and run "
        "the same command to go on, or run `pgshift abort` to drop the slot and free the WAL");
  }
  if (r.wal_status == "unreserved") {
    return Status::FailedPrecondition(
        "replication slot " + r.slot + " of database " + database + " keeps " +
        Bytes(r.retained_bytes) +
        " of WAL, past max_slot_wal_keep_size (wal_status unreserved): the source will remove "
        "that WAL at its next checkpoint and the migration will be lost; make the target "
        "apply now, or raise max_slot_wal_keep_size on the source");
  }
  return Status::Ok();
}

}  // namespace pgshift::engine
