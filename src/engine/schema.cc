#include "engine/schema.h"

#include <regex>

#include "common/log.h"
#include "common/process.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

namespace {

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

Result<std::string> RunTool(const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& env,
                            const std::optional<std::string>& input = std::nullopt) {
  ProcessOptions p;
  p.argv = argv;
  p.env = env;
  p.stdin_data = input;
  p.timeout_ms = 30 * 60 * 1000;
  auto r = RunProcess(p);
  if (!r.ok()) return r.status().WithContext(argv[0]);
  if (!r->ok()) return Status::Internal(argv[0] + " failed: " + r->Describe());
  return r->out;
}

Result<std::set<std::string>> TargetSettings(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query("SELECT name FROM pg_settings"));
  std::set<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.insert(r.Get(i, 0));
  return out;
}

}  // namespace

std::string AdaptDump(const std::string& dump, const std::set<std::string>& target_settings,
                      int target_major) {
  static const std::regex kSet(R"(^SET\s+([a-z_.]+)\s*=)");
  std::string out;
  out.reserve(dump.size());
  bool skipping = false;
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
    out += line;
    out += '\n';
  }
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
  auto dump = RunTool({tools.pg_dumpall, "--roles-only", "--no-comments"}, env);
  if (!dump.ok()) {
    // Without access to pg_authid (a managed service), dump the roles without passwords.
    dump = RunTool({tools.pg_dumpall, "--roles-only", "--no-comments", "--no-role-passwords"}, env);
    if (!dump.ok()) return dump.status();
    notes.push_back("role passwords could not be read on the source (no access to pg_authid): "
                    "roles were created without passwords; set them on the target");
  }
  PGSHIFT_ASSIGN_OR_RETURN(std::string target_user, dst->QueryValue("SELECT current_user"));
  PGSHIFT_ASSIGN_OR_RETURN(std::string password_encryption,
                           dst->QueryValue("SHOW password_encryption"));
  std::string me_quoted = dst->QuoteIdent(target_user);
  int applied = 0;
  for (std::string stmt : SplitRoleStatements(*dump)) {
    // The role pgshift logs in as keeps its attributes and password on the target.
    if (stmt.rfind("ALTER ROLE " + me_quoted + " ", 0) == 0 ||
        stmt.rfind("ALTER ROLE " + target_user + " ", 0) == 0) {
      continue;
    }
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
      if (dst->last_sqlstate() == "42710") continue;  // CREATE ROLE of an existing role
      std::string first_line = Split(stmt, '\n')[0];
      notes.push_back("not carried: `" + RedactSecrets(first_line.substr(0, 120)) +
                      "`: " + r.message());
      continue;
    }
    applied++;
  }
  LogInfo("roles copied", {{"statements", std::to_string(applied)}});
  return notes;
}

Status CopySchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                  const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(auto src, pg::Connection::Connect(source_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst, pg::Connection::Connect(target_db_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(auto src_env, ToolEnv(source_db_dsn, *src));
  PGSHIFT_ASSIGN_OR_RETURN(auto dst_env, ToolEnv(target_db_dsn, *dst));
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string dump,
      RunTool({tools.pg_dump, "--schema-only", "--no-publications", "--no-subscriptions",
               "--exclude-schema=_pgshift", "--quote-all-identifiers"},
              src_env));
  PGSHIFT_ASSIGN_OR_RETURN(auto settings, TargetSettings(*dst));
  std::string adapted = AdaptDump(dump, settings, dst->ServerMajor());
  ProcessOptions p;
  p.argv = {tools.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"};
  p.env = dst_env;
  p.stdin_data = adapted;
  p.timeout_ms = 30 * 60 * 1000;
  auto r = RunProcess(p);
  if (!r.ok()) return r.status().WithContext("applying the schema");
  if (!r->ok()) {
    return Status::FailedPrecondition(
        "the target (PostgreSQL " + std::to_string(dst->ServerMajor()) +
        ") rejected the source's schema: " + r->Describe() +
        "\nnothing was applied (one transaction); fix or drop the object on the source, or "
        "choose a target version that supports it");
  }
  return Status::Ok();
}

}  // namespace pgshift::engine
