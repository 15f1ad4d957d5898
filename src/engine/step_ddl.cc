// DDL during the migration: carried to the target from the catch-up on (ddl_carry.h), and
// what cannot be carried blocks the cutover with the statement and the way out.
#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "common/clock.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/ddl_carry.h"
#include "engine/inspect.h"
#include "engine/migration.h"
#include "engine/server_ops.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

constexpr const char* kLogSql = R"SQL(
SELECT id, at::text, tag, role, left(command, 500), statement IS NOT NULL, coalesce(why_not, '')
FROM _pgshift.ddl_log WHERE id > $1 AND tag IS DISTINCT FROM $2 ORDER BY id
)SQL";

constexpr const char* kNotCarriedYet =
    "it ran before pgshift began carrying DDL (at the end of the initial copy)";

}  // namespace

Status Migration::EnableDdlCarry() {
  for (auto& db : state_.databases) {
    if (db.ddl_carry) continue;
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    // The publication carries the log from its start (StepInitialCopy). One made by an older
    // pgshift does not: its DDL blocks the cutover as it did then.
    if (!Exists(*src,
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 "
                "AND schemaname = '_pgshift' AND tablename = 'ddl_log'",
                state_.PublicationName(db))) {
      Progress("DDL on the source is not carried for database " + db.name +
               " (its publication predates it): DDL blocks the cutover");
      continue;
    }
    // Every row the stream brings after this one is run on the target.
    PGSHIFT_RETURN_IF_ERROR(
        src->Query("INSERT INTO _pgshift.ddl_log (tag, role) VALUES ($1, current_user)",
                   {kCarryFromHereTag})
            .status());
    db.ddl_carry = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
    Progress("DDL on the source is carried to the target from now on: " + db.name);
  }
  return Status::Ok();
}

Status Migration::CheckDdlLog() {
  std::vector<std::string> found;
  int64_t blocking = 0;
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult log,
                             src->Query(kLogSql, {std::to_string(db.ddl_mark), kCarryFromHereTag}));
    if (log.rows() == 0) continue;
    // id -> carried, as the target's copy of the log says.
    std::map<int64_t, bool> carried;
    ConnPtr dst;
    if (db.ddl_carry) {
      PGSHIFT_ASSIGN_OR_RETURN(dst, Connect(state_.target_dsn, db.name, "target"));
      auto read_target = [&]() -> Status {
        carried.clear();
        PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult t,
                                 dst->Query("SELECT id, carried FROM _pgshift.ddl_log WHERE id > $1",
                                            {std::to_string(db.ddl_mark)}));
        for (int i = 0; i < t.rows(); ++i) {
          long long id = 0;
          if (ParseInt64(t.Get(i, 0), &id)) carried[id] = t.Get(i, 1) == "t";
        }
        return Status::Ok();
      };
      PGSHIFT_RETURN_IF_ERROR(read_target());
      bool missing = false;
      for (int i = 0; i < log.rows() && !missing; ++i) {
        long long id = 0;
        missing = ParseInt64(log.Get(i, 0), &id) && carried.count(id) == 0;
      }
      if (missing) {
        // Logged on the source, not applied yet: the stream brings it before the marker.
        PGSHIFT_RETURN_IF_ERROR(WaitForMarker(true, MonotonicMillis() + 60000, &watch_));
        PGSHIFT_RETURN_IF_ERROR(read_target());
      }
    }
    std::vector<int64_t> ok_ids;
    std::vector<std::string> newly;
    for (int i = 0; i < log.rows(); ++i) {
      long long id = 0;
      if (!ParseInt64(log.Get(i, 0), &id)) return Status::Internal("unexpected DDL log id");
      auto it = carried.find(id);
      if (it != carried.end() && it->second) {
        ok_ids.push_back(id);
        if (std::find(db.ddl_carried.begin(), db.ddl_carried.end(), id) == db.ddl_carried.end()) {
          newly.push_back(log.Get(i, 4));
        }
        continue;
      }
      // The source's verdict when it said no. Else it came before the carry row, or (not on
      // the target once the marker crossed) before the subscription existed: the copy ran.
      const std::string why = log.Get(i, 5) == "f" ? log.Get(i, 6) : kNotCarriedYet;
      blocking++;
      if (found.size() < 20) {
        found.push_back(db.name + ": " + log.Get(i, 2) + " by " + log.Get(i, 3) + " at " +
                        log.Get(i, 1) + " (not carried: " + why + "): " + log.Get(i, 4));
      }
    }
    if (ok_ids.empty()) continue;
    // Whatever else blocks, the tables the carried DDL made, renamed or dropped follow now.
    PGSHIFT_RETURN_IF_ERROR(SyncNewTables(db, *src, *dst));
    for (const auto& text : newly) {
      Progress("DDL carried to the target (" + db.name + "): " + text);
      state_.notes.push_back(db.name + ": DDL carried to the target: " + text.substr(0, 200));
    }
    db.ddl_carried = ok_ids;
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  if (found.empty()) return Status::Ok();
  stats_.Update([&](StatsSnapshot& st) { st.ddl_events = std::max(st.ddl_events, blocking); });
  return Status::FailedPrecondition(
      "DDL ran on the source after the schema copy that pgshift did not carry to the target, so "
      "the target's schema may differ; cutover is blocked:\n  " + Join(found, "\n  ") +
      "\napply the same change to the target (it is fenced: in a superuser session run SET "
      "session_replication_role = replica and SET default_transaction_read_only = off first), "
      "then delete these rows from _pgshift.ddl_log on the source, or abort and start again; "
      "pgshift carries ALTER TABLE, CREATE/DROP TABLE, INDEX, SEQUENCE, VIEW, FUNCTION and "
      "TRIGGER, COMMENT, GRANT and REVOKE when each is sent as a statement of its own");
}

Result<int64_t> Migration::DdlLogSize() {
  int64_t total = 0;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(int64_t n, CountDdlLog(*src, db.ddl_mark));
    total += n;
  }
  return total;
}

Status Migration::SyncNewTables(DatabaseState& db, pg::Connection& src, pg::Connection& dst) {
  const std::string pub = state_.PublicationName(db);
  const std::string sub = state_.SubscriptionName(db);
  auto published = [&]() -> Result<std::set<std::pair<std::string, std::string>>> {
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult r,
        src.Query("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
                  {pub}));
    std::set<std::pair<std::string, std::string>> out;
    for (int i = 0; i < r.rows(); ++i) out.insert({r.Get(i, 0), r.Get(i, 1)});
    return out;
  };
  PGSHIFT_ASSIGN_OR_RETURN(auto members, published());
  PGSHIFT_ASSIGN_OR_RETURN(auto tables, ListTables(src));
  std::vector<std::string> added;
  for (const auto& t : tables) {
    if (!IsMigrated(t) || members.count({t.schema, t.name}) > 0) continue;
    const std::string q = src.QuoteIdent(t.schema) + "." + src.QuoteIdent(t.name);
    PGSHIFT_ASSIGN_OR_RETURN(std::string there,
                             dst.QueryValue("SELECT to_regclass($1) IS NOT NULL", {q}));
    if (there != "t") {
      return Status::FailedPrecondition(
          "table " + t.QualifiedName() + " of database " + db.name +
          " was made on the source during the migration and is not on the target; create it "
          "there (the same definition) and run the command again, or abort and start again");
    }
    if (!t.replica_identity_usable) {
      if (state_.options.tables_without_pk != TablesWithoutPk::kFull) {
        return Status::FailedPrecondition(
            "table " + t.QualifiedName() + " of database " + db.name +
            " was made on the source during the migration without a primary key, so its "
            "updates and deletes cannot be replicated and its rows are not yet on the target; "
            "add one (ALTER TABLE ... ADD PRIMARY KEY), or run again with --tables-without-pk "
            "full");
      }
      PGSHIFT_RETURN_IF_ERROR(src.Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
      PGSHIFT_RETURN_IF_ERROR(dst.Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
      state_.notes.push_back(db.name + ": " + t.QualifiedName() + " set to REPLICA IDENTITY FULL");
    }
    added.push_back(q);
  }
  if (!added.empty()) {
    // Rows written before the table joined the publication come with the table's own copy;
    // those after it, with the stream.
    PGSHIFT_RETURN_IF_ERROR(src.Exec("ALTER PUBLICATION " + src.QuoteIdent(pub) + " ADD TABLE " +
                                     Join(added, ", "))
                                .WithContext("source " + db.name + ": publishing new tables"));
    PGSHIFT_RETURN_IF_ERROR(dst.Exec("ALTER SUBSCRIPTION " + dst.QuoteIdent(sub) +
                                     " REFRESH PUBLICATION WITH (copy_data = true)")
                                .WithContext("target " + db.name + ": subscribing to new tables"));
    Progress("copying the tables made on the source during the migration (" + db.name +
             "): " + Join(added, ", "));
    while (true) {
      PGSHIFT_ASSIGN_OR_RETURN(SyncCounts c, SubscriptionSync(dst, sub));
      if (c.total > 0 && c.ready == c.total) break;
      PGSHIFT_RETURN_IF_ERROR(watch_.Observe(dst, db.name, sub));
      MaybeSampleStats();
      PGSHIFT_RETURN_IF_ERROR(GuardWal());
      PGSHIFT_RETURN_IF_ERROR(Wait(250));
    }
    PGSHIFT_ASSIGN_OR_RETURN(members, published());
  }
  // The state's table list (the reverse publication's) follows the publication: tables made,
  // renamed, moved or dropped by carried DDL.
  std::vector<std::string> names;
  for (const auto& [schema, name] : members) {
    if (schema == "_pgshift" && name == "ddl_log") continue;
    names.push_back(src.QuoteIdent(schema) + "." + src.QuoteIdent(name));
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> before = db.tables;
  std::sort(before.begin(), before.end());
  if (names == before) return Status::Ok();
  db.tables = names;
  PGSHIFT_RETURN_IF_ERROR(Save());
  const std::string rev = state_.ReverseName(db);
  if (state_.options.rollback_replication && Exists(dst, kHasPublication, rev)) {
    PGSHIFT_RETURN_IF_ERROR(dst.Exec("ALTER PUBLICATION " + dst.QuoteIdent(rev) + " SET TABLE " +
                                     Join(names, ", "))
                                .WithContext("target " + db.name + ": reverse publication"));
  }
  return Status::Ok();
}

}  // namespace pgshift::engine
