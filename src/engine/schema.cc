#include "engine/schema.h"

#include "engine/preflight.h"

#include <stdlib.h>

#include <map>
#include <regex>

#include "common/files.h"
#include "common/log.h"
#include "common/process.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

namespace {

constexpr int kToolTimeoutMs = 30 * 60 * 1000;

// Environment for a libpq client tool connecting like `conn` (which already authenticated:
// its password, from the DSN or a pgpass file, goes to PGPASSWORD).
Result<std::map<std::string, std::string>> ToolEnv(const std::string& dsn,
                                                   const pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(dsn));
  auto env = pg::ConnInfoEnv(info);
  std::string pw = conn.Password();
  if (!pw.empty()) env["PGPASSWORD"] = pw;
  env["PGAPPNAME"] = "pgshift";
  env["PGCONNECT_TIMEOUT"] = info.Get("connect_timeout", "10");
  return env;
}

// Runs a client tool to completion; its failure carries the tail of its stderr.
Result<std::string> RunTool(const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& env,
                            const std::optional<std::string>& input = std::nullopt) {
  ProcessOptions p;
  p.argv = argv;
  p.env = env;
  p.stdin_data = input;
  p.timeout_ms = kToolTimeoutMs;
  auto r = RunProcess(p);
  if (!r.ok()) return r.status().WithContext(argv[0]);
  if (!r->ok()) return Status::Internal(argv[0] + " failed: " + RedactSecrets(r->Describe()));
  return r->out;
}

Result<std::set<std::string>> TargetSettings(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query("SELECT name FROM pg_settings"));
  std::set<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.insert(r.Get(i, 0));
  return out;
}

Result<std::set<std::string>> CatalogIds(pg::Connection& conn, const std::string& sql) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query(sql));
  std::set<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.insert(r.Get(i, 0));
  return out;
}

// Catalog ids ("<classid> <objid>", as pg_restore -l prints them) of constraints NOT VALID on
// the connected source database: table and domain CHECKs, foreign keys, NOT NULL (18+).
constexpr const char* kNotValidSql =
    "SELECT 'pg_constraint'::regclass::oid::text || ' ' || oid::text FROM pg_constraint "
    "WHERE NOT convalidated";
// pgshift's own objects in the source database (its schema is left out by pg_dump itself).
constexpr const char* kOwnObjectsSql =
    "SELECT 'pg_event_trigger'::regclass::oid::text || ' ' || oid::text FROM pg_event_trigger "
    "WHERE evtname LIKE 'pgshift\\_%' "
    "UNION ALL SELECT 'pg_publication'::regclass::oid::text || ' ' || oid::text "
    "FROM pg_publication WHERE pubname LIKE 'pgshift\\_%' "
    "UNION ALL SELECT 'pg_publication_rel'::regclass::oid::text || ' ' || pr.oid::text "
    "FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
    "WHERE p.pubname LIKE 'pgshift\\_%'";

// A private temporary folder, removed with everything in it when this goes away.
class TempDir {
 public:
  static Result<TempDir> Create() {
    const char* base = ::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/pgshift-schema-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return Status::Internal("cannot make a temporary folder under " + DirName(tmpl));
    }
    return TempDir(tmpl);
  }
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    if (!path_.empty()) (void)RemoveAll(path_);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

// One pg_dump -Fc of a database's schema and its table of contents.
struct Archive {
  TempDir dir;
  std::string file;
  std::string toc;  // pg_restore -l
};

Result<Archive> DumpArchive(const ToolPaths& tools,
                            const std::map<std::string, std::string>& src_env) {
  PGSHIFT_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create());
  std::string file = dir.path() + "/schema.dump";
  // User publications travel with the schema (their subscribers can follow the database);
  // pgshift's own are left out by the table of contents, subscriptions by pg_dump.
  PGSHIFT_RETURN_IF_ERROR(RunTool({tools.pg_dump, "--schema-only", "--format=custom",
                                   "--no-subscriptions", "--exclude-schema=_pgshift",
                                   "--quote-all-identifiers", "--file=" + file},
                                  src_env)
                              .status()
                              .WithContext("dumping the source's schema"));
  PGSHIFT_ASSIGN_OR_RETURN(std::string toc, RunTool({tools.pg_restore, "--list", file}, {}));
  return Archive{std::move(dir), file, std::move(toc)};
}

// The SQL of `section` of the archive, adapted to the target, or "" when nothing is selected.
Result<std::string> RenderSection(const ToolPaths& tools, const Archive& archive,
                                  SchemaSection section, pg::Connection& src,
                                  pg::Connection& dst, int* entries) {
  PGSHIFT_ASSIGN_OR_RETURN(auto own, CatalogIds(src, kOwnObjectsSql));
  std::set<std::string> not_valid;
  if (section == SchemaSection::kAllButNotValid || section == SchemaSection::kNotValid) {
    PGSHIFT_ASSIGN_OR_RETURN(not_valid, CatalogIds(src, kNotValidSql));
  }
  std::string list = SelectTocEntries(archive.toc, section, not_valid, own);
  if (list.empty()) {
    if (entries != nullptr) *entries = 0;
    return std::string();
  }
  std::string list_file = archive.dir.path() + "/selected.list";
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(list_file, list, 0600));
  std::vector<std::string> argv = {tools.pg_restore, "--use-list=" + list_file, "--file=-"};
  if (section == SchemaSection::kPreData) argv.push_back("--section=pre-data");
  if (section == SchemaSection::kPostData) argv.push_back("--section=post-data");
  argv.push_back(archive.file);
  PGSHIFT_ASSIGN_OR_RETURN(std::string script, RunTool(argv, {}));
  if (entries != nullptr) *entries = static_cast<int>(Split(list, '\n', true).size());
  PGSHIFT_ASSIGN_OR_RETURN(auto settings, TargetSettings(dst));
  return AdaptDump(script, settings, dst.ServerMajor());
}

bool IsSuperuser(pg::Connection& c) {
  auto v = c.QueryValue("SELECT current_setting('is_superuser')");
  return v.ok() && *v == "on";
}

// What pgshift runs before the schema on the target: event triggers of the loaded schema (or
// the database) must not fire on pgshift's own DDL, and only a superuser may say so.
std::string ScriptPreamble(pg::Connection& dst) {
  return IsSuperuser(dst) ? "SET session_replication_role = replica;\n" : "";
}

std::string Excerpt(std::string_view text, size_t max_chars) {
  std::string s(Trim(text));
  if (s.size() > max_chars) s = s.substr(0, max_chars) + " ...";
  return s;
}

std::string DescribeRefusal(const SchemaRefusal& r, int target_major) {
  std::string out = "the target (PostgreSQL " + std::to_string(target_major) + ") refused ";
  out += r.object.empty() ? "a statement" : r.object;
  out += ": " + r.error;
  if (!r.statement.empty()) out += "\nstatement (script line " + std::to_string(r.line) + "):\n" + r.statement;
  return out;
}

// Role statements to apply on the target: pg_dumpall's, less the role pgshift logs in as (it
// keeps its own password and attributes there).
std::vector<std::string> RoleStatementsFor(const std::string& dump, const std::string& me,
                                           const std::string& me_quoted) {
  std::vector<std::string> out;
  for (std::string stmt : SplitRoleStatements(dump)) {
    if (stmt.rfind("ALTER ROLE " + me_quoted + " ", 0) == 0 ||
        stmt.rfind("ALTER ROLE " + me + " ", 0) == 0) {
      continue;
    }
    out.push_back(std::move(stmt));
  }
  return out;
}

// pg_dumpall --roles-only, with password hashes where the source lets us read them.
Result<std::string> DumpRoles(const ToolPaths& tools, const std::map<std::string, std::string>& env,
                              std::vector<std::string>* notes) {
  auto dump = RunTool({tools.pg_dumpall, "--roles-only", "--no-comments"}, env);
  if (dump.ok()) return dump;
  // Without access to pg_authid (a managed service), dump the roles without passwords.
  dump = RunTool({tools.pg_dumpall, "--roles-only", "--no-comments", "--no-role-passwords"}, env);
  if (!dump.ok()) return dump.status();
  notes->push_back("role passwords could not be read on the source (no access to pg_authid): "
                   "roles were created without passwords; set them on the target");
  return dump;
}

}  // namespace

ToolPaths ToolPaths::InDir(const std::string& dir) {
  ToolPaths t;
  t.dir = dir;
  if (!dir.empty()) {
    t.pg_dump = dir + "/pg_dump";
    t.pg_dumpall = dir + "/pg_dumpall";
    t.pg_restore = dir + "/pg_restore";
    t.psql = dir + "/psql";
  }
  return t;
}

std::string_view SchemaSectionName(SchemaSection section) {
  switch (section) {
    case SchemaSection::kAll: return "schema";
    case SchemaSection::kPreData: return "pre-data";
    case SchemaSection::kPostData: return "post-data";
    case SchemaSection::kAllButNotValid: return "schema without NOT VALID constraints";
    case SchemaSection::kNotValid: return "NOT VALID constraints";
  }
  return "?";
}

std::string AdaptDump(const std::string& dump, const std::set<std::string>& target_settings,
                      int target_major) {
  static const std::regex kSet(R"(^SET\s+([a-z_.]+)\s*=)");
  std::string out;
  out.reserve(dump.size());
  bool skipping = false;
  std::string create_table;             // inside this CREATE TABLE statement
  std::vector<std::string> not_null;    // its inherited columns declared NOT NULL
  for (const auto& line : Split(dump, '\n')) {
    if (skipping) {
      if (!line.empty() && line.back() == ';') skipping = false;
      continue;
    }
    std::smatch m;
    if (std::regex_search(line, m, kSet) && !target_settings.count(m[1].str()) &&
        m[1].str().find('.') == std::string::npos) {
      continue;
    }
    static const std::regex kOwnTrigger(R"(^(CREATE|ALTER|COMMENT ON) EVENT TRIGGER "?pgshift_)");
    if (std::regex_search(line, kOwnTrigger)) {
      skipping = line.empty() || line.back() != ';';
      continue;
    }
    // PostgreSQL 14 made pg_database_owner own schema public; older servers lack the role.
    if (target_major < 14 && line.find("OWNER TO pg_database_owner;") != std::string::npos) {
      continue;
    }
    // PostgreSQL 18 dumps the NOT NULL of an inherited column (an inheritance child's primary
    // key, say) as a table constraint, "NOT NULL col", which older servers cannot parse: it
    // becomes ALTER TABLE ONLY ... SET NOT NULL right after the CREATE TABLE.
    if (target_major < 18) {
      static const std::regex kCreate(R"(^CREATE (?:UNLOGGED )?TABLE (.+?) (?:PARTITION OF .+ )?\($)");
      static const std::regex kNotNull(R"(^\s+(?:CONSTRAINT (?:"(?:[^"]|"")+"|\S+) )?NOT NULL ("(?:[^"]|"")+"|[^\s,]+)(,?)$)");
      if (std::regex_search(line, m, kCreate)) {
        create_table = m[1].str();
        not_null.clear();
      } else if (!create_table.empty() && std::regex_match(line, m, kNotNull)) {
        not_null.push_back(m[1].str());
        // The element before it ends with a comma that now ends the list.
        if (m[2].str().empty() && out.size() >= 2 && out[out.size() - 2] == ',') {
          out.erase(out.size() - 2, 1);
        }
        continue;
      } else if (!create_table.empty() && !line.empty() && line.back() == ';') {
        out += line + "\n";
        for (const auto& col : not_null) {
          out += "ALTER TABLE ONLY " + create_table + " ALTER COLUMN " + col + " SET NOT NULL;\n";
        }
        create_table.clear();
        continue;
      }
    }
    out += line;
    out += '\n';
  }
  return out;
}

std::string SelectTocEntries(const std::string& toc, SchemaSection section,
                             const std::set<std::string>& not_valid,
                             const std::set<std::string>& own) {
  // "3146; 2606 16397 CHECK CONSTRAINT public p p_v_pos postgres"
  static const std::regex kEntry(R"(^\s*(\d+);\s+(\d+)\s+(\d+)\s)");
  std::string out;
  for (const auto& line : Split(toc, '\n', true)) {
    std::smatch m;
    if (!std::regex_search(line, m, kEntry)) continue;  // comments and blank lines
    const std::string id = m[2].str() + " " + m[3].str();
    if (own.count(id)) continue;
    const bool nv = not_valid.count(id) > 0;
    if (section == SchemaSection::kAllButNotValid && nv) continue;
    if (section == SchemaSection::kNotValid && !nv) continue;
    out += line;
    out += '\n';
  }
  return out;
}

std::vector<SchemaRefusal> ParsePsqlErrors(const std::string& stderr_text,
                                           const std::string& script) {
  // The archive entry each script line belongs to: the last header above it.
  static const std::regex kHeader(R"(^-- (?:Data for )?Name: (.*?); Type: (.*?); Schema: (.*?)(?:; Owner: .*)?$)");
  struct Header {
    int line = 0;
    std::string type, object;
  };
  std::vector<std::string> lines = Split(script, '\n');
  std::vector<Header> headers;  // in line order
  for (size_t i = 0; i < lines.size(); ++i) {
    std::smatch m;
    if (lines[i].rfind("-- ", 0) == 0 && std::regex_match(lines[i], m, kHeader)) {
      std::string schema = m[3].str();
      headers.push_back({static_cast<int>(i + 1), m[2].str(),
                         m[2].str() + " " + (schema == "-" ? "" : schema + ".") + m[1].str()});
    }
  }
  auto header_for = [&headers](int line) -> const Header* {
    const Header* found = nullptr;
    for (const auto& h : headers) {
      if (h.line > line) break;
      found = &h;
    }
    return found;
  };

  static const std::regex kError(R"(^psql:[^:]*:(\d+): (ERROR|FATAL|PANIC):  (?:([0-9A-Z]{5}): )?(.*)$)");
  static const std::regex kOther(R"(^psql:[^:]*:\d+: )");
  std::vector<SchemaRefusal> out;
  SchemaRefusal* current = nullptr;
  for (const auto& l : Split(stderr_text, '\n')) {
    std::smatch m;
    if (std::regex_match(l, m, kError)) {
      SchemaRefusal r;
      r.line = std::stoi(m[1].str());
      r.sqlstate = m[3].str();
      r.error = m[2].str() + ": " + m[4].str();
      if (const Header* h = header_for(r.line)) {
        r.type = h->type;
        r.object = h->object;
        // The entry's SQL from below its header block to the failing line.
        std::string text;
        int lines_taken = 0;
        for (int i = h->line + 1; i <= r.line && i <= static_cast<int>(lines.size()); ++i) {
          const std::string& s = lines[static_cast<size_t>(i - 1)];
          if (s == "--" || (text.empty() && Trim(s).empty())) continue;
          if (++lines_taken > 12) {
            text += "...\n";
            break;
          }
          text += s + "\n";
        }
        r.statement = RedactSecrets(Excerpt(text, 1500));
      }
      out.push_back(std::move(r));
      current = &out.back();
      continue;
    }
    if (std::regex_search(l, kOther)) {
      current = nullptr;  // a NOTICE or WARNING: not a refusal
      continue;
    }
    if (current == nullptr) continue;
    for (const char* tag : {"DETAIL:  ", "HINT:  ", "CONTEXT:  "}) {
      if (l.rfind(tag, 0) == 0) current->error += "\n" + l;
    }
  }
  // Objects a refused statement should have made are missing for the statements after it.
  static const std::set<std::string> kUndefined = {"42P01", "42704", "42883", "3F000", "42703"};
  bool earlier = false;
  for (auto& r : out) {
    if (r.object.empty()) continue;
    r.follows_earlier = earlier && kUndefined.count(r.sqlstate) > 0;
    earlier = true;
  }
  for (auto& r : out) r.error = RedactSecrets(r.error);
  return out;
}

std::vector<std::string> SplitRoleStatements(const std::string& script) {
  std::vector<std::string> out;
  std::string current;
  for (const auto& line : Split(script, '\n')) {
    std::string_view t = Trim(line);
    if (current.empty() && (t.empty() || t.rfind("--", 0) == 0 || t.front() == '\\' ||
                            t.rfind("SET ", 0) == 0)) {
      continue;
    }
    current += current.empty() ? "" : "\n";
    current += line;
    if (!t.empty() && t.back() == ';') {
      out.push_back(current);
      current.clear();
    }
  }
  return out;
}

std::string DowngradeGrant(const std::string& statement) {
  static const std::regex kOpts(R"(\s+WITH\s+((ADMIN|INHERIT|SET)\s+(OPTION|TRUE|FALSE)(\s*,\s*)?)+)",
                                std::regex::icase);
  std::smatch m;
  if (!std::regex_search(statement, m, kOpts)) return statement;
  std::string keep = std::regex_search(m.str(), std::regex("ADMIN\\s+(OPTION|TRUE)", std::regex::icase))
                         ? " WITH ADMIN OPTION"
                         : "";
  return m.prefix().str() + keep + m.suffix().str();
}

Result<std::vector<std::string>> CopyRoles(const std::string& source_dsn,
                                           const std::string& target_dsn, const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(target_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto env, ToolEnv(source_dsn, *src));
  std::vector<std::string> notes;
  PGSHIFT_ASSIGN_OR_RETURN(std::string dump, DumpRoles(tools, env, &notes));
  PGSHIFT_ASSIGN_OR_RETURN(std::string target_user, dst->QueryValue("SELECT current_user"));
  PGSHIFT_ASSIGN_OR_RETURN(std::string password_encryption,
                           dst->QueryValue("SHOW password_encryption"));
  int applied = 0, created = 0, existing = 0, not_carried = 0;
  const std::vector<std::string> statements =
      RoleStatementsFor(dump, target_user, dst->QuoteIdent(target_user));
  for (const std::string& stmt : statements) {
    if (stmt.find("PASSWORD 'md5") != std::string::npos && password_encryption != "md5") {
      std::smatch m;
      std::regex role_re(R"(ALTER ROLE (\S+))");
      std::string role = std::regex_search(stmt, m, role_re) ? m[1].str() : "?";
      notes.push_back("role " + role + " has an md5 password hash: it was copied, but logs in only "
                      "where pg_hba.conf allows md5; reset its password to get a SCRAM secret");
    }
    auto r = dst->Exec(stmt);
    if (!r.ok() && dst->last_sqlstate() == "42601" && stmt.rfind("GRANT ", 0) == 0) {
      std::string older = DowngradeGrant(stmt);
      if (older != stmt) r = dst->Exec(older);
    }
    if (!r.ok()) {
      if (dst->last_sqlstate() == "42710") {  // CREATE ROLE of an existing role
        existing++;
        continue;
      }
      not_carried++;
      std::string first_line = Split(stmt, '\n')[0];
      notes.push_back("not carried: `" + RedactSecrets(first_line.substr(0, 120)) +
                      "`: " + r.message());
      continue;
    }
    if (stmt.rfind("CREATE ROLE ", 0) == 0) created++;
    applied++;
  }
  // What was and was not carried, so that "0" never reads as "nothing happened by mistake".
  LogInfo("roles copied", {{"created", std::to_string(created)},
                           {"already_on_target", std::to_string(existing)},
                           {"statements", std::to_string(applied)},
                           {"not_carried", std::to_string(not_carried)},
                           {"kept", "the attributes and password of " + target_user +
                                        ", the role pgshift connects as, on the target"}});
  return notes;
}

// The SQL of `section` of one database's schema, adapted to the target.
Result<std::string> DumpSchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                               const ToolPaths& tools, SchemaSection section) {
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(target_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto src_env, ToolEnv(source_db_dsn, *src));
  PGSHIFT_ASSIGN_OR_RETURN(Archive archive, DumpArchive(tools, src_env));
  return RenderSection(tools, archive, section, *src, *dst, nullptr);
}

Status CreateDatabaseLike(pg::Connection& target_admin, pg::Connection& source,
                          const std::string& source_db, const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      source.Query("SELECT pg_encoding_to_char(encoding), datcollate, datctype "
                   "FROM pg_database WHERE datname = $1",
                   {source_db}));
  if (r.rows() == 0) return Status::NotFound("no database " + source_db + " on the source");
  std::string create = "CREATE DATABASE " + target_admin.QuoteIdent(name) +
                       " TEMPLATE template0 ENCODING " + target_admin.QuoteLiteral(r.Get(0, 0));
  Status s = target_admin.Exec(create + " LC_COLLATE " + target_admin.QuoteLiteral(r.Get(0, 1)) +
                               " LC_CTYPE " + target_admin.QuoteLiteral(r.Get(0, 2)));
  if (!s.ok() && target_admin.last_sqlstate() != "42P04") {
    LogWarn("creating " + name + " with the source's locale failed (" + s.message() +
            "); using the target's default locale");
    s = target_admin.Exec(create);
  }
  if (!s.ok() && target_admin.last_sqlstate() != "42P04") return s;
  return Status::Ok();
}

Result<int> CopyStatistics(const std::string& source_db_dsn, const std::string& target_db_dsn,
                           const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string version, RunTool({tools.pg_dump, "--version"}, {}));
  PGSHIFT_ASSIGN_OR_RETURN(int tool_major, ParseToolMajor(version));
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(target_db_dsn));
  if (tool_major < 18 || dst->ServerMajor() < 18) {
    return Status::FailedPrecondition(
        "copying statistics needs pg_dump 18+ (" + tools.pg_dump + " is " +
        std::to_string(tool_major) + ") and a target of PostgreSQL 18+ (it is " +
        std::to_string(dst->ServerMajor()) + ")");
  }
  PGSHIFT_ASSIGN_OR_RETURN(auto src_env, ToolEnv(source_db_dsn, *src));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst_env, ToolEnv(target_db_dsn, *dst));
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string script,
      RunTool({tools.pg_dump, "--statistics-only", "--exclude-schema=_pgshift"}, src_env));
  int relations = 0;
  for (size_t at = script.find("pg_restore_relation_stats("); at != std::string::npos;
       at = script.find("pg_restore_relation_stats(", at + 1)) {
    ++relations;
  }
  if (relations == 0) return 0;
  PGSHIFT_RETURN_IF_ERROR(RunTool({tools.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                   "--single-transaction", "--output=/dev/null", "--file=-"},
                                  dst_env, script)
                              .status()
                              .WithContext("restoring the source's statistics on the target"));
  return relations;
}

Status CopySchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                  const ToolPaths& tools, SchemaSection section) {
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(target_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto src_env, ToolEnv(source_db_dsn, *src));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst_env, ToolEnv(target_db_dsn, *dst));
  PGSHIFT_ASSIGN_OR_RETURN(Archive archive, DumpArchive(tools, src_env));
  int entries = 0;
  PGSHIFT_ASSIGN_OR_RETURN(std::string script,
                           RenderSection(tools, archive, section, *src, *dst, &entries));
  if (entries == 0) return Status::Ok();
  script = ScriptPreamble(*dst) + script;
  ProcessOptions p;
  p.argv = {tools.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
            "--single-transaction", "--output=/dev/null", "--file=-"};
  p.env = dst_env;
  p.stdin_data = script;
  p.timeout_ms = kToolTimeoutMs;
  auto r = RunProcess(p);
  const std::string what(SchemaSectionName(section));
  if (!r.ok()) return r.status().WithContext("applying the " + what);
  if (r->ok()) {
    LogInfo("schema applied", {{"section", what}, {"entries", std::to_string(entries)}});
    return Status::Ok();
  }
  auto refusals = ParsePsqlErrors(r->err, script);
  if (refusals.empty()) {
    // Not a statement: psql could not connect, or died.
    return Status::Unavailable("applying the " + what + ": psql " +
                               RedactSecrets(r->Describe()));
  }
  const SchemaRefusal& first = refusals.front();
  if (first.sqlstate == "42710" || first.sqlstate == "42P07") {
    return Status::AlreadyExists("the " + what + " is already on the target: " + first.object +
                                 ": " + first.error);
  }
  return Status::FailedPrecondition(
      DescribeRefusal(first, dst->ServerMajor()) + "\nnothing of the " + what +
      " was applied (one transaction); run `pgshift check` to see every statement the target "
      "refuses, then fix or drop the object on the source, or choose a target version that "
      "supports it");
}

Result<SchemaProof> ProveSchemaLoads(const std::string& source_db_dsn,
                                     const std::string& target_admin_dsn, const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_db_dsn, 10, "pgshift"));
  PGSHIFT_ASSIGN_OR_RETURN(auto admin, pg::Connection::Connect(target_admin_dsn, 10, "pgshift"));
  PGSHIFT_RETURN_IF_ERROR(src->Exec("SET default_transaction_read_only = on"));
  PGSHIFT_ASSIGN_OR_RETURN(auto src_env, ToolEnv(source_db_dsn, *src));
  SchemaProof proof;

  // Scratch databases of runs that died before dropping theirs; one in use is another run's.
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult old,
      admin->Query("SELECT datname FROM pg_database WHERE datname LIKE $1 || '%'",
                   {std::string("pgshift\\_scratch\\_")}));
  for (int i = 0; i < old.rows(); ++i) {
    if (admin->Exec("DROP DATABASE IF EXISTS " + admin->QuoteIdent(old.Get(i, 0))).ok()) {
      proof.dropped_leftovers.push_back(old.Get(i, 0));
    }
  }

  // Everything read from the source before the scratch database exists: it lives seconds.
  std::vector<std::string> notes;
  PGSHIFT_ASSIGN_OR_RETURN(std::string roles_dump, DumpRoles(tools, src_env, &notes));
  PGSHIFT_ASSIGN_OR_RETURN(Archive archive, DumpArchive(tools, src_env));

  PGSHIFT_ASSIGN_OR_RETURN(std::string source_db, src->QueryValue("SELECT current_database()"));
  proof.scratch_database = std::string(kScratchPrefix) + RandomHex(8);
  PGSHIFT_RETURN_IF_ERROR(CreateDatabaseLike(*admin, *src, source_db, proof.scratch_database)
                              .WithContext("creating the scratch database on the target"));
  // Dropped on every way out from here.
  struct DropScratch {
    pg::Connection* admin;
    std::string name;
    ~DropScratch() {
      Status s = admin->Exec("DROP DATABASE IF EXISTS " + admin->QuoteIdent(name));
      if (!s.ok()) LogWarn("dropping the scratch database " + name + ": " + s.message());
    }
  } drop{admin.get(), proof.scratch_database};

  PGSHIFT_ASSIGN_OR_RETURN(std::string scratch_dsn,
                           pg::DsnForDatabase(target_admin_dsn, proof.scratch_database));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(scratch_dsn, 10, "pgshift"));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst_env, ToolEnv(scratch_dsn, *dst));

  // The roles first, as the migration copies them before the schema, inside the same
  // transaction: the schema's owners and grants need them, and the rollback takes them away.
  PGSHIFT_ASSIGN_OR_RETURN(std::string me, dst->QueryValue("SELECT current_user"));
  std::string roles_sql;
  for (std::string stmt : RoleStatementsFor(roles_dump, me, dst->QuoteIdent(me))) {
    if (dst->ServerMajor() < 16 && stmt.rfind("GRANT ", 0) == 0) stmt = DowngradeGrant(stmt);
    roles_sql += stmt + "\n";
  }

  PGSHIFT_ASSIGN_OR_RETURN(std::string schema, RenderSection(tools, archive, SchemaSection::kAll,
                                                             *src, *dst, &proof.entries));
  // `dst` stays open until psql is done: a session on the scratch database is what keeps a
  // concurrent run's leftover sweep (above) from dropping it.
  std::string head = "BEGIN;\n" + roles_sql;
  const int first_schema_line = static_cast<int>(Split(head, '\n').size());
  std::string script = head + schema + "\nROLLBACK;\n";

  ProcessOptions p;
  // ON_ERROR_ROLLBACK: a savepoint around each statement, so one refusal does not end the
  // transaction and every later statement is still tried.
  p.argv = {tools.psql, "-X", "-q", "-v", "ON_ERROR_ROLLBACK=on", "-v", "VERBOSITY=verbose",
            "--output=/dev/null", "--file=-"};
  p.env = dst_env;
  p.stdin_data = script;
  p.timeout_ms = kToolTimeoutMs;
  auto r = RunProcess(p);
  if (!r.ok()) return r.status().WithContext("loading the schema into the scratch database");
  if (!r->ok()) {
    return Status::Unavailable("loading the schema into the scratch database: psql " +
                               RedactSecrets(r->Describe()));
  }
  for (auto& refusal : ParsePsqlErrors(r->err, script)) {
    if (refusal.line < first_schema_line) {
      if (refusal.sqlstate == "42710") continue;  // CREATE ROLE of a role the target has
      // Role statements carry password hashes: name the error only.
      notes.push_back("a role statement was refused: " + refusal.error);
      continue;
    }
    proof.refusals.push_back(std::move(refusal));
  }
  proof.role_notes = std::move(notes);
  return proof;
}

}  // namespace pgshift::engine
