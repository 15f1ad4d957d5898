// Phases Preflight, Provisioning, Roles and Schema: checks, target databases, pgshift's
// bookkeeping on the source, roles and schema.
#include "engine/migration.h"

#include <algorithm>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/ddl_carry.h"
#include "engine/inspect.h"
#include "engine/preflight.h"
#include "engine/server_ops.h"
#include "engine/verify.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

// pgshift's own bookkeeping in every migrated source (and target) database. The event
// trigger records DDL by anyone but pgshift itself; the marker row carries the cutover's
// "everything before this is applied" token through replication. The DDL log is published
// too, and from the catch-up on its target trigger runs on the target what the event trigger
// judged it can carry (ddl_carry.h): `statement` is that statement, or NULL with `why_not`
// saying why. The ALTER gives a log made by an older pgshift the verdict's columns.
constexpr const char* kSourceSetupSql = R"SQL(
CREATE SCHEMA IF NOT EXISTS _pgshift;
CREATE TABLE IF NOT EXISTS _pgshift.ddl_log (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  tag text,
  command text,
  role text);
ALTER TABLE _pgshift.ddl_log ADD COLUMN IF NOT EXISTS search_path text,
  ADD COLUMN IF NOT EXISTS statement text, ADD COLUMN IF NOT EXISTS why_not text,
  ADD COLUMN IF NOT EXISTS objects jsonb;
CREATE TABLE IF NOT EXISTS _pgshift.marker (
  id int PRIMARY KEY,
  token text NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
INSERT INTO _pgshift.marker VALUES (1, 'init') ON CONFLICT (id) DO NOTHING;
)SQL";

constexpr const char* kTargetSetupSql = R"SQL(
CREATE SCHEMA IF NOT EXISTS _pgshift;
CREATE TABLE IF NOT EXISTS _pgshift.marker (
  id int PRIMARY KEY,
  token text NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
)SQL";

}  // namespace

Status Migration::StepPreflight() {
  if (state_.phase == Phase::kPending) {
    PGSHIFT_RETURN_IF_ERROR(Save());
    PGSHIFT_RETURN_IF_ERROR(Move(Phase::kPreflight));
  }
  PreflightOptions po;
  po.databases = state_.options.databases;
  po.tables_without_pk_full = state_.options.tables_without_pk == TablesWithoutPk::kFull;
  po.tools = tools_;
  po.rollback_replication = state_.options.rollback_replication;
  po.max_retained_wal = state_.options.max_retained_wal;
  po.migration_id = state_.id;
  po.allow_own_leftovers = true;
  auto rep = RunPreflight(state_.source_dsn, state_.target_dsn, po);
  if (!rep.ok()) return rep.status().WithContext("preflight");
  if (rep->HasErrors()) {
    Progress("preflight found problems:\n" + rep->RenderTable());
    return Status::FailedPrecondition("preflight failed; nothing was changed on either server");
  }
  state_.source_major = rep->source_major;
  state_.target_major = rep->target_major;
  state_.databases.clear();
  int index = 0;
  for (const auto& name : rep->databases) {
    DatabaseState db;
    db.name = name;
    db.index = index++;
    state_.databases.push_back(db);
  }
  for (const auto& r : rep->results) {
    if (r.severity == Severity::kWarning) state_.notes.push_back(r.subject + ": " + r.message);
  }
  Progress("preflight passed: PostgreSQL " + std::to_string(rep->source_major) + " -> " +
           std::to_string(rep->target_major) + " (" + rep->direction + "), databases: " +
           Join(rep->databases, ", "));
  return Move(Phase::kProvisioning);
}

// Target databases, and pgshift's DDL log and marker on the source.
Status Migration::StepProvision() {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo tinfo, pg::ConnInfo::Parse(state_.target_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo sinfo, pg::ConnInfo::Parse(state_.source_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr tadmin, Connect(state_.target_dsn, tinfo.dbname(), "target"));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr sadmin, Connect(state_.source_dsn, sinfo.dbname(), "source"));
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(bool exists, DatabaseExists(*tadmin, db.name));
    if (!exists) {
      // Recorded first: preflight saw no such database, so one found after a crash right
      // after CREATE DATABASE is ours too, and abort must drop it.
      db.target_created = true;
      PGSHIFT_RETURN_IF_ERROR(Save());
      PGSHIFT_RETURN_IF_ERROR(CreateDatabaseLike(*tadmin, *sadmin, db.name, db.name)
                                  .WithContext("creating database " + db.name + " on the target"));
      Progress("created database " + db.name + " on the target");
    }
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_RETURN_IF_ERROR(src->Exec(kSourceSetupSql).WithContext("source " + db.name));
    PGSHIFT_RETURN_IF_ERROR(src->Exec(kDdlLogFunctionsSql).WithContext("source " + db.name));
    std::string trig = state_.EventTriggerName();
    if (!Exists(*src, "SELECT 1 FROM pg_event_trigger WHERE evtname = $1", trig)) {
      PGSHIFT_RETURN_IF_ERROR(src->Exec("CREATE EVENT TRIGGER " + src->QuoteIdent(trig) +
                                        " ON ddl_command_end EXECUTE FUNCTION _pgshift.log_ddl()")
                                  .WithContext("source " + db.name + ": DDL event trigger"));
    }
  }
  return Move(Phase::kRoles);
}

Status Migration::StepRoles() {
  PGSHIFT_ASSIGN_OR_RETURN(auto notes, CopyRoles(state_.source_dsn, state_.target_dsn, tools_));
  for (const auto& n : notes) {
    Progress("roles: " + n);
    state_.notes.push_back("roles: " + n);
  }
  return Move(Phase::kSchema);
}

Status Migration::StepSchema() {
  for (auto& db : state_.databases) {
    if (db.schema_copied) continue;
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    // A crash after the schema was applied but before the state said so: the target already
    // holds it (the apply is one transaction, so it is all or nothing).
    PGSHIFT_ASSIGN_OR_RETURN(auto target_tables, ListTables(*dst));
    bool already = !target_tables.empty();
    // DDL logged up to here is part of the dump; anything later blocks cutover.
    PGSHIFT_ASSIGN_OR_RETURN(std::string mark,
                             src->QueryValue("SELECT coalesce(max(id), 0) FROM _pgshift.ddl_log"));
    if (!already) {
      PGSHIFT_ASSIGN_OR_RETURN(std::string sdsn, pg::DsnForDatabase(state_.source_dsn, db.name));
      PGSHIFT_ASSIGN_OR_RETURN(std::string tdsn, pg::DsnForDatabase(state_.target_dsn, db.name));
      // pgshift's own copy loads rows into bare tables: indexes, constraints and triggers
      // (post-data, the constraints NOT VALID on the source among them) come after it
      // (step_copy.cc). The subscription's copy checks each row against what is on the target
      // already: constraints NOT VALID on the source wait until every table is copied.
      Status s = CopySchema(sdsn, tdsn, tools_,
                            state_.options.copy == CopyMethod::kSnapshot
                                ? SchemaSection::kPreData
                                : SchemaSection::kAllButNotValid);
      if (!s.ok()) return s.WithContext("schema of database " + db.name);
    }
    PGSHIFT_RETURN_IF_ERROR(dst->Exec(kTargetSetupSql).WithContext("target " + db.name));
    // Before the subscription exists: its copy of the DDL log runs nothing until the carry
    // row comes (EnableDdlCarry).
    PGSHIFT_RETURN_IF_ERROR(InstallDdlCarry(*dst).WithContext("target " + db.name + ": DDL carry"));
    long long ddl_mark = 0;
    if (!ParseInt64(mark, &ddl_mark)) {
      return Status::Internal("unexpected DDL log position '" + mark + "' on the source");
    }
    db.ddl_mark = ddl_mark;
    db.schema_copied = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
    Progress("schema copied: " + db.name);
  }
  return Move(Phase::kInitialCopy);
}

Status Migration::ApplyNotValidConstraints() {
  // The own copy's post-data (pg_dump's post-data section) holds them already.
  if (state_.options.copy == CopyMethod::kSnapshot) return Status::Ok();
  for (auto& db : state_.databases) {
    if (db.not_valid_applied) continue;
    PGSHIFT_ASSIGN_OR_RETURN(std::string sdsn, pg::DsnForDatabase(state_.source_dsn, db.name));
    PGSHIFT_ASSIGN_OR_RETURN(std::string tdsn, pg::DsnForDatabase(state_.target_dsn, db.name));
    Status s = CopySchema(sdsn, tdsn, tools_, SchemaSection::kNotValid);
    // Already there: an earlier run committed them (one transaction) and crashed before
    // recording it.
    if (!s.ok() && s.code() != StatusCode::kAlreadyExists) {
      return s.WithContext("NOT VALID constraints of database " + db.name);
    }
    db.not_valid_applied = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
  }
  return Status::Ok();
}

}  // namespace pgshift::engine
