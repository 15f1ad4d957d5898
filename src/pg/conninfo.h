// Connection strings: parse (keyword=value or URI), change and render them. Rendering for
// people always goes through Redacted(), which hides the password.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::pg {

class ConnInfo {
 public:
  // Accepts everything libpq accepts; a clear error otherwise.
  static Result<ConnInfo> Parse(const std::string& dsn);

  std::string Get(const std::string& key, const std::string& fallback = "") const;
  void Set(const std::string& key, const std::string& value);
  void Erase(const std::string& key) { params_.erase(key); }
  bool Has(const std::string& key) const { return params_.count(key) > 0; }

  // keyword=value form, values quoted as libpq wants.
  std::string ToString() const;
  // The same with the password replaced by "*****".
  std::string Redacted() const;
  const std::map<std::string, std::string>& params() const { return params_; }

  std::string host() const { return Get("host", "localhost"); }
  std::string port() const { return Get("port", "5432"); }
  std::string user() const { return Get("user"); }
  std::string dbname() const { return Get("dbname", user()); }

 private:
  std::map<std::string, std::string> params_;
};

// One line of a pgpass file (any database), with ':' and '\\' escaped as libpq wants.
std::string PgpassLine(const std::string& host, int port, const std::string& user,
                       const std::string& password);

// `dsn` with its database replaced by `dbname` (keyword=value form).
Result<std::string> DsnForDatabase(const std::string& dsn, const std::string& dbname);

// libpq environment variables (PGHOST, PGPORT, PGPASSWORD, ...) equivalent to `info`, for
// child processes such as pg_dump: secrets go through the environment, never argv.
std::map<std::string, std::string> ConnInfoEnv(const ConnInfo& info);

// A text[] literal ('{"a","b\\"c"}') for passing a list of strings as one query parameter;
// every element is quoted and escaped, whatever it holds.
std::string TextArrayLiteral(const std::vector<std::string>& items);

// Quotes a conninfo value: 'it''s' style with backslash escapes, as libpq parses them.
std::string QuoteConnValue(const std::string& value);

}  // namespace pgshift::pg
