#include "pg/connection.h"

#include <cstdlib>
#include <cstring>

#include "common/log.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::pg {
namespace {

std::string CleanMessage(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return RedactSecrets(s);
}

StatusCode CodeForSqlState(const std::string& state) {
  if (state.empty() || state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0 ||
      state == "53300" || state == "40001" || state == "40P01") {
    return StatusCode::kUnavailable;
  }
  if (state == "42501" || state.rfind("28", 0) == 0 || state.rfind("55", 0) == 0) {
    return StatusCode::kFailedPrecondition;
  }
  if (state == "42P01" || state == "42704" || state == "3D000") return StatusCode::kNotFound;
  if (state == "42710" || state == "42P07" || state == "23505") return StatusCode::kAlreadyExists;
  if (state == "57014") return StatusCode::kAborted;
  if (state.rfind("22", 0) == 0 || state.rfind("42", 0) == 0) return StatusCode::kInvalidArgument;
  return StatusCode::kInternal;
}

// Server notices and warnings (e.g. ending a session that just went away) are for the log at
// debug level, not for the user's terminal, where libpq would print them.
void NoticeToLog(void*, const char* message) { LogDebug("server: " + CleanMessage(message)); }

}  // namespace

std::string QueryResult::Get(int row, int col) const {
  if (PQgetisnull(res_.get(), row, col)) return "";
  return std::string(PQgetvalue(res_.get(), row, col),
                     static_cast<size_t>(PQgetlength(res_.get(), row, col)));
}

int QueryResult::ColumnIndex(std::string_view name) const {
  std::string n(name);
  int idx = PQfnumber(res_.get(), ("\"" + n + "\"").c_str());
  if (idx < 0) {
    fprintf(stderr, "pgshift bug: no column '%s' in result\n", n.c_str());
    std::abort();
  }
  return idx;
}

std::string QueryResult::Get(int row, std::string_view name) const {
  return Get(row, ColumnIndex(name));
}

std::optional<std::string> QueryResult::GetOpt(int row, std::string_view name) const {
  int c = ColumnIndex(name);
  if (IsNull(row, c)) return std::nullopt;
  return Get(row, c);
}

long long QueryResult::GetInt(int row, std::string_view name) const {
  return std::strtoll(Get(row, name).c_str(), nullptr, 10);
}

bool QueryResult::GetBool(int row, std::string_view name) const { return Get(row, name) == "t"; }

long long QueryResult::AffectedRows() const {
  const char* n = PQcmdTuples(res_.get());
  return n && *n ? std::strtoll(n, nullptr, 10) : 0;
}

Result<std::unique_ptr<Connection>> Connection::Connect(const std::string& dsn,
                                                         int connect_timeout_s,
                                                         const std::string& application_name) {
  // Parse first: a malformed DSN gets a clear message before any network work.
  auto parsed = ConnInfo::Parse(dsn);
  if (!parsed.ok()) return parsed.status();
  std::string timeout = std::to_string(connect_timeout_s);
  // Defaults first: the expanded dsn (the last entry) overrides them.
  const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), application_name.c_str(), dsn.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn == nullptr) return Status::Internal("libpq: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string msg = CleanMessage(PQerrorMessage(conn));
    PQfinish(conn);
    StatusCode code = StatusCode::kUnavailable;
    if (msg.find("password authentication failed") != std::string::npos ||
        msg.find("no password supplied") != std::string::npos ||
        msg.find("does not exist") != std::string::npos ||
        msg.find("invalid") != std::string::npos ||
        msg.find("missing \"=\"") != std::string::npos) {
      code = StatusCode::kInvalidArgument;
    }
    return Status(code, "cannot connect: " + msg);
  }
  PQsetNoticeProcessor(conn, NoticeToLog, nullptr);
  return std::unique_ptr<Connection>(new Connection(conn));
}

Connection::~Connection() { PQfinish(conn_); }

Status Connection::ResultStatus(PGresult* res) {
  last_sqlstate_.clear();
  if (res == nullptr) {
    return Status::Unavailable("query failed: " + CleanMessage(PQerrorMessage(conn_)));
  }
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY ||
      st == PGRES_COPY_IN || st == PGRES_COPY_OUT) {
    return Status::Ok();
  }
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  last_sqlstate_ = state ? state : "";
  std::string msg = CleanMessage(PQresultErrorMessage(res));
  if (msg.empty()) msg = CleanMessage(PQerrorMessage(conn_));
  return Status(CodeForSqlState(last_sqlstate_),
                last_sqlstate_.empty() ? msg : msg + " (SQLSTATE " + last_sqlstate_ + ")");
}

Result<QueryResult> Connection::Query(const std::string& sql, const std::vector<Param>& params) {
  PGresult* res;
  if (params.empty()) {
    res = PQexec(conn_, sql.c_str());
  } else {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    res = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                       values.data(), nullptr, nullptr, 0);
  }
  QueryResult owned(res);
  Status s = ResultStatus(res);
  if (!s.ok()) return s;
  return owned;
}

Status Connection::Send(const std::string& sql, const std::vector<Param>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  // As Query: without parameters, several statements may be sent at once.
  int sent = params.empty()
                 ? PQsendQuery(conn_, sql.c_str())
                 : PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                                     values.data(), nullptr, nullptr, 0);
  if (sent == 0) {
    last_sqlstate_.clear();
    return Status::Unavailable("query failed: " + CleanMessage(PQerrorMessage(conn_)));
  }
  return Status::Ok();
}

Result<QueryResult> Connection::Receive() {
  // One statement gives one result, then NULL; the first failure wins.
  Result<QueryResult> out = Status::Unavailable("query failed: no result");
  bool have = false;
  while (PGresult* res = PQgetResult(conn_)) {
    QueryResult owned(res);
    if (have && !out.ok()) continue;
    Status s = ResultStatus(res);
    out = s.ok() ? Result<QueryResult>(std::move(owned)) : Result<QueryResult>(s);
    have = true;
  }
  if (!have) return Status::Unavailable("query failed: " + CleanMessage(PQerrorMessage(conn_)));
  return out;
}

Status Connection::Exec(const std::string& sql) {
  auto r = Query(sql);
  return r.ok() ? Status::Ok() : r.status();
}

Result<std::string> Connection::QueryValue(const std::string& sql,
                                           const std::vector<Param>& params) {
  PGSHIFT_ASSIGN_OR_RETURN(QueryResult r, Query(sql, params));
  if (r.rows() == 0 || r.columns() == 0) return Status::NotFound("query returned no row");
  return r.Get(0, 0);
}

namespace {

// `text` between `quote`s with each `quote` doubled: the SQL rule for identifiers and for
// standard-conforming string literals. No byte of a multibyte character in any client encoding
// PostgreSQL supports is a quote, so this cannot end the quoting early; an invalid sequence or
// a NUL makes the statement fail on the server (libpq sends up to the NUL: unterminated quote).
std::string QuotePlain(std::string_view text, char quote) {
  std::string out(1, quote);
  for (char c : text) {
    if (c == quote) out += quote;
    out += c;
  }
  return out + quote;
}

}  // namespace

std::string Connection::QuoteIdent(std::string_view name) const {
  char* q = PQescapeIdentifier(conn_, name.data(), name.size());
  if (q == nullptr) return QuotePlain(name, '"');
  std::string out(q);
  PQfreemem(q);
  return out;
}

std::string Connection::QuoteLiteral(std::string_view value) const {
  char* q = PQescapeLiteral(conn_, value.data(), value.size());
  if (q == nullptr) {
    // E'' with quotes and backslashes doubled means the same whatever
    // standard_conforming_strings says (libpq's own form for text with backslashes).
    std::string doubled;
    for (char c : value) {
      if (c == '\\') doubled += c;
      doubled += c;
    }
    return " E" + QuotePlain(doubled, '\'');
  }
  std::string out(q);
  PQfreemem(q);
  return out;
}

std::string Connection::ErrorMessage() const { return CleanMessage(PQerrorMessage(conn_)); }

void Connection::Cancel() {
  PGcancel* c = PQgetCancel(conn_);
  if (c == nullptr) return;
  char err[256];
  PQcancel(c, err, sizeof err);
  PQfreeCancel(c);
}

}  // namespace pgshift::pg
