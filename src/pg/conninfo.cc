#include "pg/conninfo.h"

#include <libpq-fe.h>

#include <memory>

namespace pgshift::pg {

Result<ConnInfo> ConnInfo::Parse(const std::string& dsn) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    std::string msg = err ? err : "out of memory";
    if (err) PQfreemem(err);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return Status::InvalidArgument(
        "bad connection string: " + msg +
        " (expected e.g. 'postgresql://user@host:5432/db' or 'host=... port=... dbname=...')");
  }
  std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> guard(opts, &PQconninfoFree);
  ConnInfo info;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) info.params_[o->keyword] = o->val;
  }
  return info;
}

std::string ConnInfo::Get(const std::string& key, const std::string& fallback) const {
  auto it = params_.find(key);
  return it == params_.end() || it->second.empty() ? fallback : it->second;
}

void ConnInfo::Set(const std::string& key, const std::string& value) { params_[key] = value; }

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    out += i ? ",\"" : "\"";
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

std::string QuoteConnValue(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string ConnInfo::ToString() const {
  std::string out;
  for (const auto& [k, v] : params_) {
    if (!out.empty()) out += ' ';
    out += k + "=" + QuoteConnValue(v);
  }
  return out;
}

Result<std::string> DsnForDatabase(const std::string& dsn, const std::string& dbname) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnInfo info, ConnInfo::Parse(dsn));
  info.Set("dbname", dbname);
  return info.ToString();
}

std::map<std::string, std::string> ConnInfoEnv(const ConnInfo& info) {
  static const std::map<std::string, std::string> kEnv = {
      {"host", "PGHOST"},         {"hostaddr", "PGHOSTADDR"},   {"port", "PGPORT"},
      {"dbname", "PGDATABASE"},   {"user", "PGUSER"},           {"password", "PGPASSWORD"},
      {"passfile", "PGPASSFILE"}, {"sslmode", "PGSSLMODE"},     {"sslrootcert", "PGSSLROOTCERT"},
      {"sslcert", "PGSSLCERT"},   {"sslkey", "PGSSLKEY"},       {"connect_timeout", "PGCONNECT_TIMEOUT"},
      {"options", "PGOPTIONS"},   {"target_session_attrs", "PGTARGETSESSIONATTRS"},
      {"channel_binding", "PGCHANNELBINDING"}, {"gssencmode", "PGGSSENCMODE"}};
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : info.params()) {
    auto it = kEnv.find(k);
    if (it != kEnv.end()) env[it->second] = v;
  }
  return env;
}

std::string ConnInfo::Redacted() const {
  ConnInfo copy = *this;
  if (copy.Has("password")) copy.Set("password", "*****");
  return copy.ToString();
}

std::string PgpassLine(const std::string& host, int port, const std::string& user,
                       const std::string& password) {
  auto esc = [](const std::string& v) {
    std::string o;
    for (char c : v) {
      if (c == ':' || c == '\\') o += '\\';
      o += c;
    }
    return o;
  };
  return esc(host) + ":" + std::to_string(port) + ":*:" + esc(user) + ":" + esc(password) + "\n";
}

}  // namespace pgshift::pg
