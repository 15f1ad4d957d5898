// An owned libpq connection and owned query results. Not thread-safe: one thread per
// Connection. Error messages never include the password.
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pgshift::pg {

using Param = std::optional<std::string>;  // nullopt is SQL NULL

class QueryResult {
 public:
  QueryResult() = default;
  explicit QueryResult(PGresult* res) : res_(res, &PQclear) {}

  int rows() const { return res_ ? PQntuples(res_.get()) : 0; }
  int columns() const { return res_ ? PQnfields(res_.get()) : 0; }
  bool IsNull(int row, int col) const { return PQgetisnull(res_.get(), row, col) != 0; }
  std::string Get(int row, int col) const;
  // The value of the column named `name`; empty when NULL. Aborts on a wrong name (a bug).
  std::string Get(int row, std::string_view name) const;
  std::optional<std::string> GetOpt(int row, std::string_view name) const;
  long long GetInt(int row, std::string_view name) const;
  bool GetBool(int row, std::string_view name) const;  // 't' / 'f'
  int ColumnIndex(std::string_view name) const;
  std::string ColumnName(int col) const { return PQfname(res_.get(), col); }
  // Rows affected by INSERT/UPDATE/DELETE.
  long long AffectedRows() const;

 private:
  std::shared_ptr<PGresult> res_;
};

class Connection {
 public:
  // `connect_timeout_s` applies unless the DSN sets connect_timeout itself.
  static Result<std::unique_ptr<Connection>> Connect(const std::string& dsn,
                                                      int connect_timeout_s = 10,
                                                      const std::string& application_name = "pgshift");
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one statement (with $1.. parameters when given). Rows in the result.
  Result<QueryResult> Query(const std::string& sql, const std::vector<Param>& params = {});
  // Runs one or more statements without parameters, rows discarded.
  Status Exec(const std::string& sql);
  // The first column of the first row; NotFound when there is no row.
  Result<std::string> QueryValue(const std::string& sql, const std::vector<Param>& params = {});
  // Query in two halves, so that several connections work at once: Send starts the statement
  // (without parameters, several) and returns; Receive waits for the last statement's result
  // (or the first error). REQUIRES: every successful Send is followed by a Receive before any
  // other call on this connection.
  Status Send(const std::string& sql, const std::vector<Param>& params = {});
  Result<QueryResult> Receive();

  // Quoted for SQL. Never fails: when libpq refuses the text (not valid in the connection's
  // encoding) it is quoted by the plain rule (quotes doubled) and the server then rejects the
  // statement with an error, rather than pgshift ending on a bad name from its input.
  std::string QuoteIdent(std::string_view name) const;
  std::string QuoteLiteral(std::string_view value) const;

  bool Healthy() const { return PQstatus(conn_) == CONNECTION_OK; }
  int ServerVersionNum() const { return PQserverVersion(conn_); }  // e.g. 170010
  int ServerMajor() const { return PQserverVersion(conn_) / 10000; }
  int BackendPid() const { return PQbackendPID(conn_); }
  // The password this connection authenticated with (from the DSN or the pgpass file); empty
  // when none was needed. For building the conninfo of a subscription; never log it.
  std::string Password() const { return PQpass(conn_) ? PQpass(conn_) : ""; }
  // SQLSTATE of the last failed call; empty when the failure was not reported by the server
  // (the connection broke: the statement's outcome is unknown).
  const std::string& last_sqlstate() const { return last_sqlstate_; }
  // True when the last failure left the connection unusable.
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }
  PGconn* raw() { return conn_; }
  // Asks the server to cancel the running statement (from another thread).
  void Cancel();

  // For code that drives libpq itself (COPY streaming, copy_pipe.h): the status of `res`, a
  // result of this connection (not freed here; nullptr: the connection failed), with
  // last_sqlstate() set as for Query; and the connection's last error message, redacted.
  Status ResultStatus(PGresult* res);
  std::string ErrorMessage() const;

 private:
  explicit Connection(PGconn* conn) : conn_(conn) {}

  PGconn* conn_;
  std::string last_sqlstate_;
};

}  // namespace pgshift::pg
