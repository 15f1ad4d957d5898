#include "engine/preflight.h"

#include "engine/wal_retention.h"

#include <algorithm>
#include <cctype>
#include <memory>
#include <set>

#include "common/process.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::engine {
namespace {

using ConnPtr = std::unique_ptr<pg::Connection>;

std::string Plural(int64_t n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

CheckResult Ok(std::string id, std::string subject, std::string message) {
  return {std::move(id), Severity::kOk, std::move(subject), std::move(message), ""};
}

// "host:port/db" of a DSN, for messages that must not show the password.
std::string Where(const std::string& dsn) {
  auto ci = pg::ConnInfo::Parse(dsn);
  if (!ci.ok()) return "(unparsable connection string)";
  return ci->host() + ":" + ci->port() + "/" + ci->dbname();
}

// Connects read-only; a failure names the side and keeps the code (bad password stays
// kInvalidArgument, unreachable stays kUnavailable).
Result<ConnPtr> ConnectSide(const std::string& side, const std::string& dsn) {
  auto conn = pg::Connection::Connect(dsn, 10, "pgshift preflight");
  if (!conn.ok()) {
    std::string msg = conn.status().message();
    const std::string prefix = "cannot connect: ";
    if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
    return Status(conn.status().code(),
                  "cannot connect to the " + side + " server (" + Where(dsn) + "): " + msg);
  }
  // Belt and braces: preflight only reads, and the session makes sure of it.
  Status s = (*conn)->Exec("SET default_transaction_read_only = on");
  if (!s.ok()) return s.WithContext(side);
  return std::move(*conn);
}

Result<ConnPtr> ConnectDatabase(const std::string& side, const std::string& dsn,
                                const std::string& db) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string db_dsn, pg::DsnForDatabase(dsn, db));
  return ConnectSide(side + " database '" + db + "'", db_dsn);
}

std::string SideServer(const std::string& side) { return "the " + side + " server"; }

// One capacity rule: `setting` with `used` taken must leave `needed` free; `wanted` is what
// runs without throttling.
CheckResult Capacity(const std::string& id, const std::string& side, const std::string& name,
                     int setting, int used, int needed, int wanted, const std::string& what) {
  int free_now = setting - used;
  std::string msg = name + " = " + std::to_string(setting) + " with " + std::to_string(used) +
                    " in use: " + std::to_string(std::max(free_now, 0)) + " free, " +
                    std::to_string(needed) + " needed (" + what + ")";
  if (free_now >= wanted) return Ok(id, side, msg);
  int suggest = used + wanted;
  std::string remedy = "on " + SideServer(side) + ": ALTER SYSTEM SET " + name + " = " +
                       std::to_string(suggest) + "; then restart it (pg_ctl restart)";
  if (free_now >= needed) {
    return {id, Severity::kWarning, side,
            msg + "; " + std::to_string(wanted) + " would let initial table sync run in parallel",
            remedy};
  }
  return {id, Severity::kError, side, msg, remedy};
}

}  // namespace

std::string_view SeverityName(Severity s) {
  switch (s) {
    case Severity::kOk: return "OK";
    case Severity::kInfo: return "INFO";
    case Severity::kWarning: return "WARN";
    case Severity::kError: return "ERROR";
  }
  return "?";
}

std::string DirectionFor(int source_major, int target_major) {
  if (source_major < target_major) return "upgrade";
  if (source_major > target_major) return "downgrade";
  return "same";
}

Result<int> ParseToolMajor(std::string_view out) {
  // "pg_dump (PostgreSQL) 17.11", "pg_dump (PostgreSQL) 12.19 (Debian 12.19-1.pgdg120+1)",
  // "pg_dump (PostgreSQL) 18beta1", "pg_dump (PostgreSQL) 9.6.24", "psql (PostgreSQL) 18.6".
  size_t pos = out.find("(PostgreSQL)");
  if (pos == std::string_view::npos) {
    return Status::InvalidArgument("not a PostgreSQL tool's --version output: '" +
                                   std::string(Trim(out.substr(0, 80))) + "'");
  }
  pos += std::string_view("(PostgreSQL)").size();
  while (pos < out.size() && out[pos] == ' ') ++pos;
  int major = 0;
  size_t digits = 0;
  while (pos < out.size() && std::isdigit(static_cast<unsigned char>(out[pos])) && digits < 4) {
    major = major * 10 + (out[pos] - '0');
    ++pos;
    ++digits;
  }
  if (digits == 0 || major == 0) {
    return Status::InvalidArgument("no version number in --version output: '" +
                                   std::string(Trim(out.substr(0, 80))) + "'");
  }
  return major;
}

std::string NameList(const std::vector<std::string>& names, size_t max_names) {
  std::vector<std::string> shown(
      names.begin(), names.begin() + static_cast<long>(std::min(max_names, names.size())));
  std::string s = Join(shown, ", ");
  if (names.size() > shown.size())
    s += " and " + std::to_string(names.size() - shown.size()) + " more";
  return s;
}

std::string DropStatement(const PgshiftObject& o) {
  // pgshift names are plain lowercase identifiers; quoting keeps odd ones safe anyway.
  auto ident = [](const std::string& n) {
    std::string q = "\"";
    for (char c : n) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  auto literal = [](const std::string& n) {
    std::string q = "'";
    for (char c : n) q += (c == '\'') ? std::string("''") : std::string(1, c);
    return q + "'";
  };
  if (o.kind == "replication slot") {
    return "SELECT pg_drop_replication_slot(" + literal(o.name) + ");";
  }
  if (o.kind == "subscription") {
    // Detach from the remote slot first, so the drop works when the other server is gone; the
    // remote slot is listed (and dropped) on its own side.
    return "ALTER SUBSCRIPTION " + ident(o.name) + " DISABLE; ALTER SUBSCRIPTION " + ident(o.name) +
           " SET (slot_name = NONE); DROP SUBSCRIPTION " + ident(o.name) + ";";
  }
  if (o.kind == "publication") return "DROP PUBLICATION " + ident(o.name) + ";";
  if (o.kind == "event trigger") return "DROP EVENT TRIGGER " + ident(o.name) + ";";
  if (o.kind == "schema") return "DROP SCHEMA " + ident(o.name) + " CASCADE;";
  return "-- unknown kind " + o.kind + ": " + o.name;
}

namespace {

// The way out of large objects: their contents into bytea columns (which replicate), written
// for the columns that may hold their OIDs.
std::string LargeObjectRemedy(const LargeObjectFacts& lo) {
  std::string out =
      "Move their contents into bytea columns, which replicate, then unlink them:";
  const size_t shown_n = std::min<size_t>(lo.oid_columns.size(), 5);
  std::vector<std::string> shown(lo.oid_columns.begin(),
                                 lo.oid_columns.begin() + static_cast<std::ptrdiff_t>(shown_n));
  if (shown.empty()) {
    out += "\n  -- no column of type oid or lo was found: find where the application keeps "
           "their OIDs, then as below";
    shown.push_back("SCHEMA.TABLE.COLUMN");
  }
  for (const auto& col : shown) {
    const auto dot = col.rfind('.');
    const std::string table = col.substr(0, dot), column = col.substr(dot + 1);
    const std::string data = column.front() == '"'
                                 ? column.substr(0, column.size() - 1) + "_data\""
                                 : column + "_data";
    out += "\n  ALTER TABLE " + table + " ADD COLUMN " + data + " bytea;\n  UPDATE " + table +
           " SET " + data + " = lo_get(" + column + ") WHERE " + column + " IS NOT NULL;";
  }
  if (lo.oid_columns.size() > shown_n) {
    out += "\n  -- and the same for " + std::to_string(lo.oid_columns.size() - shown_n) +
           " more column(s) of type oid or lo";
  }
  out += "\n  -- once the application reads the bytea columns:\n  SELECT lo_unlink(oid) FROM "
         "pg_largeobject_metadata;";
  return out;
}

}  // namespace

CheckResult CheckVersions(int s, int t) {
  const std::string range =
      std::to_string(kMinSupportedMajor) + " to " + std::to_string(kMaxSupportedMajor);
  for (auto [side, major] : {std::pair<const char*, int>{"source", s}, {"target", t}}) {
    if (major < kMinSupportedMajor || major > kMaxSupportedMajor) {
      return {"version", Severity::kError, side,
              std::string("the ") + side + " runs PostgreSQL " + std::to_string(major) +
                  "; pgshift migrates between majors " + range,
              major < kMinSupportedMajor
                  ? "upgrade that server to PostgreSQL " + std::to_string(kMinSupportedMajor) +
                        " or newer first (e.g. with pg_upgrade)"
                  : "use a pgshift release that supports PostgreSQL " + std::to_string(major)};
    }
  }
  std::string pair = std::to_string(s) + " -> " + std::to_string(t);
  if (s == t) {
    return {"version", Severity::kError, "source/target",
            "both servers run PostgreSQL " + std::to_string(s) +
                ": there is no major version to change",
            "point --target at a server of another major version"};
  }
  if (s > t) {
    return {"version", Severity::kWarning, "source/target",
            "downgrade PostgreSQL " + pair + ": objects PostgreSQL " + std::to_string(t) +
                " cannot hold are checked below (downgrade-objects)",
            "test the application against PostgreSQL " + std::to_string(t) +
                " before cutover; a downgrade gives up features of " + std::to_string(s)};
  }
  return Ok("version", "source/target", "upgrade PostgreSQL " + pair);
}

CheckResult CheckWalLevel(const std::string& side, const std::string& wal_level,
                          bool for_rollback) {
  std::string id = for_rollback ? "rollback-wal-level" : "wal-level";
  std::string why =
      for_rollback ? "reverse replication (rollback after cutover)" : "logical replication";
  if (wal_level == "logical") return Ok(id, side, "wal_level = logical");
  std::string remedy = "on " + SideServer(side) +
                       ": ALTER SYSTEM SET wal_level = logical; then restart it (pg_ctl restart)";
  if (for_rollback) {
    remedy +=
        ", or pass --rollback-replication off (then a rollback after cutover loses the "
        "writes made on the target)";
  }
  return {
      id, Severity::kError, side,
      "wal_level = " + wal_level + " on the " + side + "; " + why + " needs wal_level = logical",
      remedy};
}

std::vector<CheckResult> CheckCapacity(const ServerSettings& src, const ReplicationUsage& su,
                                       const ServerSettings& tgt, const ReplicationUsage& tu, int n,
                                       bool rollback) {
  std::vector<CheckResult> out;
  // Initial table sync runs up to max_sync_workers_per_subscription workers per subscription,
  // each with its own slot and WAL sender on the publisher.
  int sync = std::max(tgt.max_sync_workers_per_subscription, 0);
  std::string per_db = Plural(n, "database", "databases");
  auto subscriber = [&](const std::string& prefix, const std::string& side, const ServerSettings& s,
                        const ReplicationUsage& u, int wanted_extra) {
    int used = std::max(u.logical_workers, u.enabled_subscriptions);
    out.push_back(Capacity(prefix + "logical-workers", side, "max_logical_replication_workers",
                           s.max_logical_replication_workers, used, n, n + wanted_extra,
                           "one apply worker per database, " + per_db));
    // Background worker slots: the launcher and every logical worker take one.
    out.push_back(Capacity(prefix + "worker-processes", side, "max_worker_processes",
                           s.max_worker_processes, used + 1, n, n + wanted_extra,
                           "one per apply worker; the launcher holds one more"));
  };
  auto publisher = [&](const std::string& prefix, const std::string& side, const ServerSettings& s,
                       const ReplicationUsage& u, int wanted_extra) {
    out.push_back(Capacity(prefix + "replication-slots", side, "max_replication_slots",
                           s.max_replication_slots, u.slots, n, n + wanted_extra,
                           "one slot per database, " + per_db));
    out.push_back(Capacity(prefix + "wal-senders", side, "max_wal_senders", s.max_wal_senders,
                           u.wal_senders, n, n + wanted_extra,
                           "one sender per database, " + per_db));
  };
  publisher("", "source", src, su, sync);
  subscriber("", "target", tgt, tu, sync);
  if (rollback) {
    // Reverse replication starts with copy_data = false: no table sync.
    publisher("rollback-", "target", tgt, tu, 0);
    subscriber("rollback-", "source", src, su, 0);
  }
  return out;
}

std::vector<CheckResult> CheckLockTables(const std::string& db, const SchemaLocks& need,
                                         const ServerSettings& source, const ServerSettings& target) {
  std::vector<CheckResult> out;
  auto check = [&](const std::string& side, const ServerSettings& s, int64_t locks,
                   const std::string& what) {
    const int64_t slots = s.LockTableSlots();
    const std::string table = "the " + side + "'s lock table holds " + std::to_string(slots) +
                              " (max_locks_per_transaction " +
                              std::to_string(s.max_locks_per_transaction) + " x " +
                              std::to_string(s.lock_table_backends) + " backends)";
    if (slots <= 0 || locks <= slots * 4 / 5) {
      out.push_back(Ok("locks", side, db + ": " + what + " takes about " + std::to_string(locks) +
                                          " locks; " + table));
      return;
    }
    // A quarter more than needed, in steps of 64; the server needs a restart for it.
    const int64_t backends = std::max(s.lock_table_backends, 1);
    int64_t wanted = (locks * 5 / 4 + backends - 1) / backends;
    wanted = std::max<int64_t>((wanted + 63) / 64 * 64, s.max_locks_per_transaction + 64);
    out.push_back({"locks", Severity::kError, side,
                   db + ": " + what + " takes about " + std::to_string(locks) + " locks, and " +
                       table + ", so it would fail with \"out of shared memory\"",
                   "raise max_locks_per_transaction on the " + side + " to " +
                       std::to_string(wanted) + " (ALTER SYSTEM SET max_locks_per_transaction = " +
                       std::to_string(wanted) + ", then restart it)"});
  };
  check("target", target, need.load,
        "loading the schema in one transaction (its tables with their TOAST, indexes, "
        "sequences, views)");
  check("source", source, need.dump, "pg_dump, which locks every table in one transaction,");
  return out;
}

CheckResult CheckPrivileges(const std::string& side, const RolePrivileges& r) {
  if (r.superuser) return Ok("privileges", side, "role " + r.role + " is a superuser");
  std::vector<std::string> has;
  std::vector<std::string> lacks = {"SUPERUSER"};
  (r.replication ? has : lacks).push_back("REPLICATION");
  (r.create_db ? has : lacks).push_back("CREATEDB");
  std::string msg = "role " + r.role + " lacks " + Join(lacks, ", ");
  if (!has.empty()) msg += " (has " + Join(has, ", ") + ")";
  msg +=
      "; pgshift creates subscriptions and event triggers and fences the source, which "
      "need a superuser";
  return {"privileges", Severity::kError, side, msg,
          "connect to " + SideServer(side) + " as a superuser, or as one run: ALTER ROLE \"" +
              r.role + "\" SUPERUSER;"};
}

std::vector<CheckResult> CheckTables(const std::string& db, const std::vector<TableInfo>& tables,
                                     bool full) {
  std::vector<CheckResult> out;
  std::vector<std::string> no_identity, unlogged;
  int replicated = 0;
  for (const TableInfo& t : tables) {
    // A partitioned parent holds no rows: its partitions are replicated and checked.
    if (t.partitioned) continue;
    ++replicated;
    if (t.unlogged) {
      unlogged.push_back(t.QualifiedName());
      continue;
    }
    if (!t.replica_identity_usable) {
      no_identity.push_back(t.QualifiedName() +
                            (t.replica_identity == 'n' ? " (REPLICA IDENTITY NOTHING)" : ""));
    }
  }
  if (no_identity.empty()) {
    out.push_back(Ok("tables-identity", db,
                     Plural(replicated, "table", "tables") +
                         ", each with a primary key or usable replica identity"));
  } else {
    std::string msg = Plural(static_cast<int64_t>(no_identity.size()), "table has", "tables have") +
                      " no primary key or usable replica identity: " + NameList(no_identity);
    if (full) {
      out.push_back({"tables-identity", Severity::kWarning, db,
                     msg + "; they will be set to REPLICA IDENTITY FULL",
                     "updates and deletes on them replicate slower (each looks up the whole "
                     "row); add a primary key where you can"});
    } else {
      out.push_back({"tables-identity", Severity::kError, db,
                     msg + "; their updates and deletes cannot be replicated",
                     "add a primary key (ALTER TABLE <table> ADD PRIMARY KEY (<columns>);), or "
                     "rerun with --tables-without-pk full (uses REPLICA IDENTITY FULL: slower "
                     "updates)"});
    }
  }
  if (!unlogged.empty()) {
    out.push_back(
        {"unlogged-tables", Severity::kWarning, db,
         Plural(static_cast<int64_t>(unlogged.size()), "unlogged table", "unlogged tables") +
             " will arrive empty (logical replication does not carry them): " + NameList(unlogged),
         "ALTER TABLE <table> SET LOGGED; to migrate their rows, or accept them "
         "empty on the target"});
  }
  return out;
}

CheckResult CheckExtensions(const std::string& db, const std::vector<ExtensionInfo>& used,
                            const std::vector<ExtensionInfo>& available, int target_major) {
  std::set<std::string> offered;
  for (const auto& e : available) offered.insert(e.name);
  std::vector<std::string> missing, present;
  for (const auto& e : used) {
    if (e.name == "plpgsql") continue;
    (offered.count(e.name) ? present : missing).push_back(e.name + " " + e.version);
  }
  if (missing.empty()) {
    return Ok("extensions", db,
              present.empty() ? "no extensions besides plpgsql"
                              : "available on the target: " + NameList(present));
  }
  return {"extensions", Severity::kError, db,
          Plural(static_cast<int64_t>(missing.size()), "extension is", "extensions are") +
              " not available on the target: " + NameList(missing),
          "install the packages providing them for PostgreSQL " + std::to_string(target_major) +
              " on the target server (pg_available_extensions must list them), or drop them "
              "from the source"};
}

CheckResult CheckClientTool(const std::string& name, const std::string& path,
                            const std::string& dir, const Result<std::string>& output,
                            int source_major) {
  const std::string where = dir.empty() ? "PATH" : dir;
  const std::string remedy =
      "give pgshift a folder holding pg_dump, pg_dumpall and psql of PostgreSQL " +
      std::to_string(source_major) + " or newer: --pg-bin DIR or PGSHIFT_PG_BIN=DIR (now: " +
      where + "); scripts/setup.sh puts the newest major's tools in .cache/pgclient/bin";
  const std::string id = "client-tools";
  if (!output.ok()) {
    return {id, Severity::kError, name, "cannot run " + path + ": " + output.status().message(),
            remedy};
  }
  auto major = ParseToolMajor(*output);
  if (!major.ok()) {
    return {id, Severity::kError, name, path + ": " + major.status().message(), remedy};
  }
  std::string version(Trim(*output));
  if (*major < source_major) {
    return {id, Severity::kError, name,
            path + " is " + version + ": it cannot work with a PostgreSQL " +
                std::to_string(source_major) +
                " server (client tools must be at least the source's major)",
            remedy};
  }
  return Ok(id, name, path + " is " + version);
}

CheckResult CheckLeftovers(const std::string& side, const std::vector<PgshiftObject>& found,
                           const PreflightOptions& options) {
  std::vector<std::string> names;
  std::map<std::string, std::vector<std::string>> drops;  // database -> statements
  for (const PgshiftObject& o : found) {
    if (options.allow_own_leftovers) {
      // The state schema is shared by design; the rest carries the migration id.
      if (o.kind == "schema") continue;
      if (!options.migration_id.empty() && o.name.find(options.migration_id) != std::string::npos) {
        continue;
      }
    }
    names.push_back(o.kind + " " + o.name + (o.database.empty() ? "" : " (" + o.database + ")"));
    drops[o.database].push_back(DropStatement(o));
  }
  if (names.empty()) {
    return Ok("leftovers", side, "no pgshift_* objects from an earlier run");
  }
  std::string remedy = "pgshift abort --state DIR (with the state folder of that run), or on " +
                       SideServer(side) + " run:";
  for (const auto& [db, statements] : drops) {
    remedy += db.empty() ? "\n  -- in any database:" : "\n  -- in database " + db + ":";
    for (const auto& s : statements) remedy += "\n  " + s;
  }
  return {"leftovers", Severity::kError, side,
          "an earlier pgshift run left " +
              Plural(static_cast<int64_t>(names.size()), "object", "objects") + ": " +
              NameList(names),
          remedy};
}

bool PreflightReport::HasErrors() const { return Count(Severity::kError) > 0; }

int PreflightReport::Count(Severity s) const {
  return static_cast<int>(std::count_if(results.begin(), results.end(),
                                        [s](const CheckResult& r) { return r.severity == s; }));
}

std::string PreflightReport::RenderTable() const {
  std::string out = "pgshift check: PostgreSQL " + std::to_string(source_major) + " -> " +
                    std::to_string(target_major) + " (" + direction +
                    "); databases: " + (databases.empty() ? "(none)" : Join(databases, ", ")) +
                    "\n\n";
  size_t w_sev = 8, w_id = 5, w_subject = 7;  // header widths
  for (const auto& r : results) {
    w_sev = std::max(w_sev, SeverityName(r.severity).size());
    w_id = std::max(w_id, r.id.size());
    w_subject = std::max(w_subject, r.subject.size());
  }
  auto pad = [](std::string_view s, size_t w) {
    std::string p(s);
    p.resize(std::max(w, s.size()), ' ');
    return p;
  };
  auto row = [&](std::string_view sev, std::string_view id, std::string_view subject,
                 std::string_view message) {
    return pad(sev, w_sev) + "  " + pad(id, w_id) + "  " + pad(subject, w_subject) + "  " +
           std::string(message) + "\n";
  };
  out += row("SEVERITY", "CHECK", "SUBJECT", "MESSAGE");
  for (const auto& r : results) out += row(SeverityName(r.severity), r.id, r.subject, r.message);

  std::string remedies;
  for (const auto& r : results) {
    if (r.severity == Severity::kOk || r.remedy.empty()) continue;
    std::string text = r.remedy;
    // Continuation lines line up under the first.
    for (size_t p = text.find('\n'); p != std::string::npos; p = text.find('\n', p + 1)) {
      text.insert(p + 1, "    ");
    }
    remedies += "  " + std::string(SeverityName(r.severity)) + " " + r.id + " (" + r.subject +
                "):\n    " + text + "\n";
  }
  if (!remedies.empty()) out += "\nRemedies:\n" + remedies;

  int errors = Count(Severity::kError), warnings = Count(Severity::kWarning);
  out += "\n" + Plural(errors, "error", "errors") + ", " + Plural(warnings, "warning", "warnings") +
         (errors ? ": fix the errors and run the check again\n" : ": ready to migrate\n");
  return out;
}

nlohmann::json PreflightReport::ToJson() const {
  auto sev = [](Severity s) -> std::string {
    switch (s) {
      case Severity::kOk: return "ok";
      case Severity::kInfo: return "info";
      case Severity::kWarning: return "warning";
      case Severity::kError: return "error";
    }
    return "?";
  };
  nlohmann::json j;
  j["source_major"] = source_major;
  j["target_major"] = target_major;
  j["direction"] = direction;
  j["databases"] = databases;
  j["ok"] = !HasErrors();
  j["errors"] = Count(Severity::kError);
  j["warnings"] = Count(Severity::kWarning);
  j["results"] = nlohmann::json::array();
  for (const auto& r : results) {
    j["results"].push_back({{"id", r.id},
                            {"severity", sev(r.severity)},
                            {"subject", r.subject},
                            {"message", r.message},
                            {"remedy", r.remedy}});
  }
  j["tables"] = nlohmann::json::object();
  for (const auto& [db, list] : tables) {
    auto& arr = j["tables"][db] = nlohmann::json::array();
    for (const auto& t : list) {
      arr.push_back({{"schema", t.schema},
                     {"name", t.name},
                     {"has_primary_key", t.has_primary_key},
                     {"replica_identity", std::string(1, t.replica_identity)},
                     {"replica_identity_usable", t.replica_identity_usable},
                     {"unlogged", t.unlogged},
                     {"partitioned", t.partitioned},
                     {"is_partition", t.is_partition},
                     {"estimated_rows", t.estimated_rows},
                     {"bytes", t.bytes}});
    }
  }
  return j;
}

namespace {

// One finding per feature, naming its objects.
std::vector<CheckResult> BlockerResults(const std::string& id, const std::string& db,
                                        const std::vector<VersionBlocker>& blockers,
                                        int target_major) {
  std::vector<CheckResult> out;
  std::map<std::string, std::vector<const VersionBlocker*>> by_feature;
  std::vector<std::string> order;
  for (const auto& b : blockers) {
    if (!by_feature.count(b.feature)) order.push_back(b.feature);
    by_feature[b.feature].push_back(&b);
  }
  const bool upgrade = id == "upgrade-objects";
  if (blockers.empty()) {
    out.push_back(Ok(id, db,
                     "nothing found that PostgreSQL " + std::to_string(target_major) +
                         (upgrade ? " refuses or loads differently" : " cannot hold")));
  }
  for (const auto& feature : order) {
    const auto& list = by_feature[feature];
    std::vector<std::string> names;
    for (const auto* b : list) names.push_back(b->object);
    std::string what =
        upgrade ? feature + ": PostgreSQL " + std::to_string(target_major) + " cannot take it: "
                : feature + " (PostgreSQL " + std::to_string(list[0]->since_major) +
                      "+) cannot exist on PostgreSQL " + std::to_string(target_major) + ": ";
    out.push_back({id, Severity::kError, db, what + NameList(names),
                   "on the source: " + list[0]->remedy});
  }
  return out;
}

// Checks of one source database (and its namesake on the target).
Status CheckDatabase(const std::string& source_dsn, const std::string& target_dsn,
                     const std::string& db, pg::Connection& target,
                     const std::vector<ExtensionInfo>& target_available,
                     const PreflightOptions& options, PreflightReport* report,
                     std::vector<PgshiftObject>* source_leftovers,
                     std::vector<PgshiftObject>* target_leftovers) {
  auto& results = report->results;
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, ConnectDatabase("source", source_dsn, db));
  auto ctx = [&](const Status& s) { return s.WithContext("source database " + db); };

  auto tables = ListTables(*src);
  if (!tables.ok()) return ctx(tables.status());
  for (auto& c : CheckTables(db, *tables, options.tables_without_pk_full)) {
    results.push_back(std::move(c));
  }
  report->tables[db] = *tables;

  auto sequences = ListSequences(*src);
  if (!sequences.ok()) return ctx(sequences.status());
  if (!sequences->empty()) {
    results.push_back({"sequences", Severity::kInfo, db,
                       Plural(static_cast<int64_t>(sequences->size()), "sequence", "sequences") +
                           ": their values are set on the target at cutover",
                       ""});
  }

  auto large_objects = ReadLargeObjects(*src);
  if (!large_objects.ok()) return ctx(large_objects.status());
  if (large_objects->count > 0 && !large_objects->bytes) {
    const LargeObjectFacts& lo = *large_objects;
    results.push_back({"large-objects", Severity::kError, db,
                       Plural(lo.count, "large object", "large objects") +
                           ": logical replication does not carry them, and pgshift copies them "
                           "only as a superuser (pg_largeobject is readable by superusers only)",
                       "connect to both servers as a superuser; or, without one:\n" +
                           LargeObjectRemedy(lo)});
  } else if (large_objects->count > 0) {
    const LargeObjectFacts& lo = *large_objects;
    const std::string size = FormatBytes(static_cast<double>(*lo.bytes));
    results.push_back({"large-objects", Severity::kInfo, db,
                       Plural(lo.count, "large object", "large objects") + " (" + size +
                           "): logical replication does not carry them; pgshift copies them "
                           "all before the cutover is ready, again those written since before "
                           "each attempt, and inside the pause the last ones (it scans "
                           "pg_largeobject, " + size + ", while clients are held)",
                       ""});
  } else {
    results.push_back(Ok("large-objects", db, "no large objects"));
  }

  auto matviews = ListMaterializedViews(*src);
  if (!matviews.ok()) return ctx(matviews.status());
  if (!matviews->empty()) {
    results.push_back(
        {"materialized-views", Severity::kInfo, db,
         Plural(static_cast<int64_t>(matviews->size()), "materialized view", "materialized views") +
             " (not replicated), refreshed on the target after the copy: " + NameList(*matviews),
         ""});
  }

  results.push_back(
      {"statistics", Severity::kInfo, db,
       report->target_major >= 18
           ? "planner statistics are not replicated: before the target is ready for cutover "
             "the source's are copied to it (pg_dump --statistics-only, with pg_dump 18+), and "
             "tables that leaves without statistics are ANALYZEd on the target"
           : "planner statistics are not replicated: every table is ANALYZEd on the target "
             "before it is ready for cutover, so the first queries there have fresh statistics",
       ""});

  results.push_back(
      {"ddl", Severity::kInfo, db,
       "DDL on the source from the catch-up on is carried to the target at its point of the "
       "change stream (ALTER TABLE, CREATE/DROP TABLE, INDEX, SEQUENCE, VIEW, FUNCTION, "
       "TRIGGER, COMMENT, GRANT, REVOKE, each sent as a statement of its own); any other DDL, "
       "and DDL during the initial copy, blocks the cutover with the statement and the fix",
       ""});

  auto used = ListInstalledExtensions(*src);
  if (!used.ok()) return ctx(used.status());
  results.push_back(CheckExtensions(db, *used, target_available, report->target_major));

  if (report->source_major != report->target_major) {
    const bool down = report->source_major > report->target_major;
    auto blockers = down ? FindVersionBlockers(*src, report->target_major)
                         : FindUpgradeBlockers(*src, report->target_major);
    if (!blockers.ok()) return ctx(blockers.status());
    for (auto& r : BlockerResults(down ? "downgrade-objects" : "upgrade-objects", db, *blockers,
                                  report->target_major)) {
      results.push_back(std::move(r));
    }
  }

  // Rules that name objects, each for the targets it concerns.
  struct NamesRule {
    const char* id;
    Severity severity;
    int min_target_major;
    Result<std::vector<std::string>> (*list)(pg::Connection&);
    std::string what;
    const char* remedy;
  };
  const std::string as_owner = "PostgreSQL " + std::to_string(report->target_major) +
                               " copies and applies rows as each table's owner, and ";
  const NamesRule rules[] = {
      {"forced-rls", Severity::kError, 16, ListForcedRlsTables,
       as_owner + "refuses tables whose row security is forced on an owner that cannot bypass it",
       "for the migration, on the source: ALTER TABLE ... NO FORCE ROW LEVEL SECURITY (and FORCE "
       "it again on the target after cutover), or ALTER ROLE <owner> BYPASSRLS"},
      {"owner-schema-usage", Severity::kError, 16, ListOwnersWithoutSchemaUsage,
       as_owner + "these owners may not use their table's schema (permission denied for schema)",
       "on the source: GRANT USAGE ON SCHEMA <schema> TO <owner>; for each (pgshift copies the "
       "grant to the target with the schema)"},
      {"replica-triggers", Severity::kWarning, 0, ListReplicaTriggers,
       "triggers set to ENABLE ALWAYS or REPLICA fire on the target for every row the migration "
       "copies and replicates (ordinary triggers do not)",
       "if a trigger writes elsewhere or changes the row, that happens twice (on the source, and "
       "again on the target): ALTER TABLE ... ENABLE TRIGGER ... (origin only) on the source for "
       "the migration, and ENABLE ALWAYS again on the target after cutover"},
  };
  for (const NamesRule& rule : rules) {
    if (report->target_major < rule.min_target_major) continue;
    auto names = rule.list(*src);
    if (!names.ok()) return ctx(names.status());
    if (names->empty()) continue;
    results.push_back({rule.id, rule.severity, db, rule.what + ": " + NameList(*names),
                       rule.remedy});
  }

  auto own = FindDatabaseLeftovers(*src);
  if (!own.ok()) return ctx(own.status());
  source_leftovers->insert(source_leftovers->end(), own->begin(), own->end());
  src.reset();

  // The target database must be new or empty: the schema is loaded into it.
  auto exists = DatabaseExists(target, db);
  if (!exists.ok()) return exists.status().WithContext("target");
  if (!*exists) {
    results.push_back(
        Ok("target-database", db, "does not exist on the target: it will be created"));
    return Status::Ok();
  }
  auto tgt = ConnectDatabase("target", target_dsn, db);
  if (!tgt.ok()) {
    results.push_back({"target-database", Severity::kError, db,
                       "exists on the target but cannot be opened: " + tgt.status().message(),
                       "on the target: DROP DATABASE \"" + db + "\"; (pgshift creates it)"});
    return Status::Ok();
  }
  auto target_tables = ListTables(**tgt);
  if (!target_tables.ok()) return target_tables.status().WithContext("target database " + db);
  if (!target_tables->empty()) {
    std::vector<std::string> names;
    for (const auto& t : *target_tables) names.push_back(t.QualifiedName());
    results.push_back(
        {"target-database", Severity::kError, db,
         "exists on the target and holds " +
             Plural(static_cast<int64_t>(names.size()), "user table", "user tables") + ": " +
             NameList(names, 5),
         "on the target, if its contents are not needed: DROP DATABASE \"" + db +
             "\"; or migrate to another target server (pgshift loads the schema into a new or "
             "empty database)"});
  } else {
    results.push_back(Ok("target-database", db, "exists on the target and is empty"));
  }
  auto tl = FindDatabaseLeftovers(**tgt);
  if (!tl.ok()) return tl.status().WithContext("target database " + db);
  target_leftovers->insert(target_leftovers->end(), tl->begin(), tl->end());
  return Status::Ok();
}

Result<std::string> ToolVersion(const std::string& path) {
  ProcessOptions p;
  p.argv = {path, "--version"};
  p.timeout_ms = 15000;
  PGSHIFT_ASSIGN_OR_RETURN(ProcessResult r, RunProcess(p));
  if (!r.ok()) return Status::FailedPrecondition(path + " --version failed: " + r.Describe());
  return r.out;
}

}  // namespace

Result<PreflightReport> RunPreflight(const std::string& source_dsn, const std::string& target_dsn,
                                     const PreflightOptions& options) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr source, ConnectSide("source", source_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr target, ConnectSide("target", target_dsn));
  auto src_ctx = [](const Status& s) { return s.WithContext("source"); };
  auto tgt_ctx = [](const Status& s) { return s.WithContext("target"); };

  PreflightReport report;
  report.source_major = source->ServerMajor();
  report.target_major = target->ServerMajor();
  report.direction = DirectionFor(report.source_major, report.target_major);
  auto& results = report.results;
  results.push_back(CheckVersions(report.source_major, report.target_major));
  auto in_range = [](int m) { return m >= kMinSupportedMajor && m <= kMaxSupportedMajor; };
  // Catalog queries assume a supported major; stop before one fails confusingly.
  if (!in_range(report.source_major) || !in_range(report.target_major)) return report;

  // Databases.
  auto all = ListDatabases(*source);
  if (!all.ok()) return src_ctx(all.status());
  if (options.databases.empty()) {
    report.databases = *all;
  } else {
    std::set<std::string> present(all->begin(), all->end());
    for (const auto& db : options.databases) {
      if (present.count(db)) {
        if (std::find(report.databases.begin(), report.databases.end(), db) ==
            report.databases.end()) {
          report.databases.push_back(db);
        }
      } else {
        results.push_back({"databases", Severity::kError, db,
                           "no database " + db +
                               " on the source (or it does not allow "
                               "connections)",
                           "choose from: " + Join(*all, ", ")});
      }
    }
  }
  if (report.databases.empty()) {
    results.push_back({"databases", Severity::kError, "source", "no database to migrate",
                       "name existing databases with --databases"});
  } else {
    results.push_back(Ok("databases", "source", Join(report.databases, ", ")));
  }
  int n = static_cast<int>(report.databases.size());

  // Server settings and capacity.
  auto ss = ReadServerSettings(*source);
  if (!ss.ok()) return src_ctx(ss.status());
  auto ts = ReadServerSettings(*target);
  if (!ts.ok()) return tgt_ctx(ts.status());
  auto su = ReadReplicationUsage(*source);
  if (!su.ok()) return src_ctx(su.status());
  auto tu = ReadReplicationUsage(*target);
  if (!tu.ok()) return tgt_ctx(tu.status());
  results.push_back(CheckWalLevel("source", ss->wal_level, false));
  if (options.rollback_replication) {
    results.push_back(CheckWalLevel("target", ts->wal_level, true));
  } else {
    results.push_back({"rollback-replication", Severity::kInfo, "target",
                       "off: after cutover, writes on the target are not sent back to the "
                       "source, so a rollback loses them",
                       ""});
  }
  for (auto& c : CheckCapacity(*ss, *su, *ts, *tu, std::max(n, 1), options.rollback_replication)) {
    results.push_back(std::move(c));
  }
  auto wal = ReadWalRetentionFacts(*source);
  if (!wal.ok()) return src_ctx(wal.status());
  for (auto& c : CheckWalRetention(*wal, options.max_retained_wal)) results.push_back(std::move(c));
  for (auto& c : CheckFailoverSlots(*wal)) results.push_back(std::move(c));

  // Privileges.
  auto sp = ReadRolePrivileges(*source);
  if (!sp.ok()) return src_ctx(sp.status());
  results.push_back(CheckPrivileges("source", *sp));
  auto tp = ReadRolePrivileges(*target);
  if (!tp.ok()) return tgt_ctx(tp.status());
  results.push_back(CheckPrivileges("target", *tp));

  // Client tools: every one pgshift will run, from the one folder.
  for (const auto& [name, path] : options.tools.All()) {
    results.push_back(CheckClientTool(name, path, options.tools.dir, ToolVersion(path),
                                      report.source_major));
  }

  // Per database.
  auto available = ListAvailableExtensions(*target);
  if (!available.ok()) return tgt_ctx(available.status());
  auto source_leftovers = FindClusterLeftovers(*source);
  if (!source_leftovers.ok()) return src_ctx(source_leftovers.status());
  auto target_leftovers = FindClusterLeftovers(*target);
  if (!target_leftovers.ok()) return tgt_ctx(target_leftovers.status());
  std::set<std::string> too_many_locks;
  for (const auto& db : report.databases) {
    PGSHIFT_RETURN_IF_ERROR(CheckDatabase(source_dsn, target_dsn, db, *target, *available, options,
                                          &report, &*source_leftovers, &*target_leftovers));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr sdb, ConnectDatabase("source", source_dsn, db));
    auto locks = CountSchemaLocks(*sdb);
    if (!locks.ok()) return src_ctx(locks.status());
    for (auto& r : CheckLockTables(db, *locks, *ss, *ts)) {
      if (r.severity == Severity::kError && r.subject == "target") too_many_locks.insert(db);
      results.push_back(std::move(r));
    }
  }

  results.push_back(CheckLeftovers("source", *source_leftovers, options));
  results.push_back(CheckLeftovers("target", *target_leftovers, options));

  if (options.prove_schema) {
    const bool tools_ok = std::none_of(results.begin(), results.end(), [](const CheckResult& r) {
      return r.id == "client-tools" && r.severity == Severity::kError;
    });
    for (const auto& db : report.databases) {
      if (!tools_ok) {
        results.push_back({"schema-load", Severity::kError, db,
                           "not tried: the client tools above cannot run", ""});
        continue;
      }
      if (too_many_locks.count(db) > 0) {
        // It would fail on whichever statement finds the lock table full, and say so of each.
        results.push_back({"schema-load", Severity::kError, db,
                           "not tried: the target's lock table is too small for it (see locks)",
                           ""});
        continue;
      }
      auto db_dsn = pg::DsnForDatabase(source_dsn, db);
      if (!db_dsn.ok()) return db_dsn.status();
      auto proof = ProveSchemaLoads(*db_dsn, target_dsn, options.tools);
      if (!proof.ok()) {
        results.push_back({"schema-load", Severity::kError, db,
                           "the scratch load could not run: " + proof.status().message(),
                           "pgshift loads the schema into a scratch database on the target to "
                           "prove it loads: the target's role needs CREATEDB (and CREATEROLE "
                           "for the roles)"});
        continue;
      }
      for (auto& r : SchemaLoadResults(db, *proof, report.target_major)) {
        results.push_back(std::move(r));
      }
    }
  }
  return report;
}

std::vector<CheckResult> SchemaLoadResults(const std::string& database, const SchemaProof& proof,
                                           int target_major) {
  std::vector<CheckResult> out;
  const std::string target = "PostgreSQL " + std::to_string(target_major);
  for (const auto& name : proof.dropped_leftovers) {
    out.push_back({"schema-load", Severity::kInfo, "target",
                   "dropped " + name + ", a scratch database an earlier check left behind", ""});
  }
  std::vector<std::string> consequences;
  int primary = 0;
  for (const auto& r : proof.refusals) {
    if (r.follows_earlier) {
      consequences.push_back(r.object.empty() ? "line " + std::to_string(r.line) : r.object);
      continue;
    }
    primary++;
    const std::string first_line = Split(r.error, '\n')[0];
    const bool c_function =
        r.type == "FUNCTION" &&
        (r.error.find("could not access file") != std::string::npos ||
         r.error.find("could not load library") != std::string::npos ||
         r.error.find("could not find function") != std::string::npos ||
         r.error.find("incompatible library") != std::string::npos);
    std::string remedy = "the target said:\n" + r.error;
    if (!r.statement.empty()) remedy += "\nstatement:\n" + r.statement;
    if (c_function) {
      out.push_back({"c-functions", Severity::kError, database,
                     r.object + ": " + target + " cannot load its shared library: " + first_line,
                     remedy + "\ninstall the library built for " + target +
                         " on the target (into its $libdir, as pg_upgrade also requires), or "
                         "drop the function on the source"});
      continue;
    }
    out.push_back({"schema-load", Severity::kError, database,
                   r.object + " is refused by " + target + ": " + first_line,
                   remedy + "\nchange or drop " + (r.object.empty() ? "it" : r.object) +
                       " on the source so that " + target + " accepts it, or choose a target "
                       "version that does"});
  }
  if (!consequences.empty()) {
    out.push_back({"schema-load", Severity::kError, database,
                   std::to_string(consequences.size()) +
                       " more statements fail because the objects refused above are missing: " +
                       NameList(consequences),
                   "they load once the refusals above are fixed"});
  }
  if (primary == 0 && consequences.empty()) {
    out.push_back(Ok("schema-load", database,
                     "the roles and the whole schema (" + std::to_string(proof.entries) +
                         " objects) load into " + target + " (scratch database, dropped)"));
  }
  for (const auto& n : proof.role_notes) {
    out.push_back({"roles", Severity::kWarning, database, n, ""});
  }
  return out;
}

}  // namespace pgshift::engine
