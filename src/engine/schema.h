// Roles and schema: pg_dumpall --roles-only and pg_dump --schema-only from the source, adapted
// to the target's version and applied there; and the proof, before a migration, that the
// target accepts them (a scratch database, loaded and dropped).
//
// The schema travels as one custom-format archive per call (pg_dump -Fc into a private
// temporary folder), whose table of contents (pg_restore -l) selects what each step applies:
// pg_dump's sections, and apart from them the constraints that are NOT VALID on the source
// (matched by catalog OID, never by name). pg_restore writes the selection as SQL, which psql
// applies in one transaction with ON_ERROR_STOP; a refusal names the archive entry (object)
// the failing statement belongs to. Child processes get the connection through the
// environment (PGPASSWORD, ...), never through argv.
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

// The PostgreSQL client tools pgshift runs, all from one folder (or all from PATH), so that a
// check of the folder holds for every tool.
struct ToolPaths {
  std::string dir;  // empty: found on PATH
  std::string pg_dump = "pg_dump";
  std::string pg_dumpall = "pg_dumpall";
  std::string pg_restore = "pg_restore";
  std::string psql = "psql";

  // The tools in `dir` (empty: PATH).
  static ToolPaths InDir(const std::string& dir);
  // (name, path) of every tool, in a stable order.
  std::vector<std::pair<std::string, std::string>> All() const {
    return {{"pg_dump", pg_dump}, {"pg_dumpall", pg_dumpall}, {"pg_restore", pg_restore},
            {"psql", psql}};
  }
};

// Copies roles (with password hashes where the source lets us read them) onto the target.
// Roles that exist already are altered, not recreated; the role pgshift connects to the target
// as keeps its own password. Returns notes on what could not be carried.
Result<std::vector<std::string>> CopyRoles(const std::string& source_dsn,
                                           const std::string& target_dsn, const ToolPaths& tools);

// What of a database's schema one CopySchema call applies.
//
// A migration that copies the rows itself applies kPreData (types, functions, tables with their
// valid CHECK and NOT NULL constraints, sequences, views), copies, then kPostData (indexes,
// primary keys, constraints, triggers, rules, policies, publications, event triggers), so
// nothing checks or indexes rows one by one during the copy. pg_dump puts constraints that are
// NOT VALID on the source into post-data, so that copy never meets them.
//
// A migration whose subscription copies the rows (copy_data = true) needs primary keys and
// replica identities before it starts: it applies kAllButNotValid, lets every table reach
// sync state ready, then applies kNotValid. Table sync and apply workers run with
// session_replication_role = replica, so ordinary triggers (foreign keys' too) do not fire
// there; CHECK constraints, domain constraints and NOT NULL do, and a constraint NOT VALID on
// the source guards rows the source never checked: created before the copy it refuses them
// and the table's sync fails for ever.
enum class SchemaSection {
  kAll,             // everything, in pg_dump's order
  kPreData,         // pg_dump's pre-data section
  kPostData,        // pg_dump's post-data section (NOT VALID constraints included)
  kAllButNotValid,  // everything but the constraints NOT VALID on the source
  kNotValid,        // only those (CHECK, FOREIGN KEY, domain CHECK, NOT NULL), still NOT VALID
};
std::string_view SchemaSectionName(SchemaSection section);

// The script of `section` of the schema of the database `source_db_dsn` points at (without
// pgshift's own objects), adapted to the target `target_db_dsn` (AdaptDump): what CopySchema
// applies, for callers that apply it their own way (post_data.h).
Result<std::string> DumpSchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                               const ToolPaths& tools, SchemaSection section);

// Dumps `section` of the schema of the database `source_db_dsn` points at (without pgshift's
// own objects) and applies it to `target_db_dsn` in one transaction: all of it or nothing.
// A refusal is kFailedPrecondition naming the object, the server's error and the statement;
// kAlreadyExists when the section's first object is already on the target (an earlier run
// applied this section and crashed before recording it: one transaction, so all of it is).
// Nothing to apply (no NOT VALID constraint, say) is success without running psql.
Status CopySchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                  const ToolPaths& tools, SchemaSection section = SchemaSection::kAll);

// The source's planner statistics of one database, as `pg_dump --statistics-only` writes them
// (pg_restore_relation_stats and pg_restore_attribute_stats calls, pgshift's own schema left
// out), applied to the target in one transaction. Needs pg_dump 18+ and a target of 18+
// (kFailedPrecondition saying which is missing). Returns how many relations' statistics were
// restored. Extended statistics objects are not in such a dump (18): ANALYZE builds them.
Result<int> CopyStatistics(const std::string& source_db_dsn, const std::string& target_db_dsn,
                           const ToolPaths& tools);

// One statement a target refused.
struct SchemaRefusal {
  std::string object;     // "FUNCTION public.f(integer)": pg_dump's entry (Type Schema.Name)
  std::string type;       // pg_dump's entry type: "FUNCTION", "TABLE", "CHECK CONSTRAINT", ...
  std::string sqlstate;   // e.g. "58P01"
  std::string error;      // the server's message, with its DETAIL and HINT lines
  std::string statement;  // the failing entry's SQL up to the failing line (shortened)
  int line = 0;           // line of the script psql stopped at
  // An "undefined object" error after an earlier refusal: most likely a consequence of it.
  bool follows_earlier = false;
};

// What the scratch load found.
struct SchemaProof {
  std::string scratch_database;
  int entries = 0;  // archive entries loaded
  std::vector<SchemaRefusal> refusals;
  std::vector<std::string> role_notes;   // role statements the target refused (no secrets)
  std::vector<std::string> dropped_leftovers;  // scratch databases of earlier runs, dropped
};

// Scratch databases are named with this prefix; a later run drops those no session uses.
inline constexpr const char kScratchPrefix[] = "pgshift_scratch_";

// Loads the roles and the whole schema of the source database `source_db_dsn` into a new
// scratch database on the target (made through `target_admin_dsn`, with the source database's
// encoding and locale) inside one transaction that is rolled back, as the migration will load
// them, and reports every statement the target refuses; then drops the scratch database (also
// when the load fails). Scratch databases an earlier run left (a crash) are dropped first.
// Changes nothing on the source.
Result<SchemaProof> ProveSchemaLoads(const std::string& source_db_dsn,
                                     const std::string& target_admin_dsn, const ToolPaths& tools);

// Makes database `name` on the target like `source_db` on the source (template0, its encoding,
// and its collation and ctype where the target has them). An existing database is success.
Status CreateDatabaseLike(pg::Connection& target_admin, pg::Connection& source,
                          const std::string& source_db, const std::string& name);

// Adapts a pg_dump script to the target: drops SET lines for settings the target does not
// know (pg_dump 17 sets transaction_timeout, which 16 and older reject), pgshift's own event
// triggers, and statements the target's version cannot parse. Pure, for tests.
std::string AdaptDump(const std::string& dump, const std::set<std::string>& target_settings,
                      int target_major);

// ---- Building blocks (pure, for tests) ----

// The lines of a pg_restore -l listing to pass to pg_restore -L for `section`: entries whose
// catalog id ("<classid> <objid>", e.g. "2606 16397") is in `own` are left out (pgshift's own
// objects); kAllButNotValid also leaves out those in `not_valid`, kNotValid keeps only those.
// Comment lines are dropped. Section filtering (pre-data, post-data) is pg_restore's.
std::string SelectTocEntries(const std::string& toc, SchemaSection section,
                             const std::set<std::string>& not_valid,
                             const std::set<std::string>& own);
// The statements psql refused, from its stderr (run with VERBOSITY=verbose) and the script it
// read, each named by the archive entry whose header ("-- Name: ...; Type: ...; Schema: ...")
// precedes the failing line (no header above it: `object` is empty). Secrets are redacted.
std::vector<SchemaRefusal> ParsePsqlErrors(const std::string& stderr_text,
                                           const std::string& script);

// Splits a pg_dumpall --roles-only script into statements (no psql meta-commands).
std::vector<std::string> SplitRoleStatements(const std::string& script);
// Older servers reject GRANT ... WITH INHERIT/SET options (PostgreSQL 16+): strip them.
std::string DowngradeGrant(const std::string& statement);

}  // namespace pgshift::engine
