#include "engine/post_data.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/strings.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

using Wave = PostDataStatement::Wave;

bool IsIdentChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' ||
         static_cast<unsigned char>(c) >= 0x80;
}

// Index just past the comment, quoted string, quoted identifier or dollar-quoted string that
// starts at `i`, or `i` when none starts there.
size_t SkipQuoted(const std::string& s, size_t i) {
  const size_t n = s.size();
  auto at = [&](size_t k) { return k < n ? s[k] : '\0'; };
  char c = s[i];
  if (c == '-' && at(i + 1) == '-') {
    size_t e = s.find('\n', i);
    return e == std::string::npos ? n : e + 1;
  }
  if (c == '/' && at(i + 1) == '*') {
    int depth = 1;
    size_t k = i + 2;
    while (k < n && depth > 0) {
      if (s[k] == '/' && at(k + 1) == '*') {
        depth++;
        k += 2;
      } else if (s[k] == '*' && at(k + 1) == '/') {
        depth--;
        k += 2;
      } else {
        k++;
      }
    }
    return k;
  }
  if (c == '\'') {
    // E'...' strings take backslash escapes; plain ones (standard_conforming_strings, as
    // pg_dump sets it) only ''.
    bool escapes = i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') && (i < 2 || !IsIdentChar(s[i - 2]));
    size_t k = i + 1;
    while (k < n) {
      if (escapes && s[k] == '\\') {
        k += 2;
      } else if (s[k] == '\'') {
        if (at(k + 1) != '\'') return k + 1;
        k += 2;
      } else {
        k++;
      }
    }
    return n;
  }
  if (c == '"') {
    size_t k = i + 1;
    while (k < n) {
      if (s[k] == '"') {
        if (at(k + 1) != '"') return k + 1;
        k += 2;
      } else {
        k++;
      }
    }
    return n;
  }
  if (c == '$' && (i == 0 || !IsIdentChar(s[i - 1])) &&
      !std::isdigit(static_cast<unsigned char>(at(i + 1)))) {
    size_t k = i + 1;
    while (k < n && IsIdentChar(s[k]) && s[k] != '$') k++;
    if (at(k) == '$') {
      std::string tag = s.substr(i, k - i + 1);
      size_t e = s.find(tag, k + 1);
      return e == std::string::npos ? n : e + tag.size();
    }
  }
  return i;
}

// The statements of `script`, split at semicolons outside quotes and parentheses (a rule's
// actions, `DO INSTEAD (a; b)`, are one statement), without them.
std::vector<std::string> SplitStatements(const std::string& script) {
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  int depth = 0;
  while (i < script.size()) {
    size_t skip = SkipQuoted(script, i);
    if (skip != i) {
      i = skip;
      continue;
    }
    if (script[i] == '(') depth++;
    if (script[i] == ')' && depth > 0) depth--;
    if (script[i] == ';' && depth == 0) {
      out.push_back(script.substr(start, i - start));
      start = i + 1;
    }
    i++;
  }
  out.push_back(script.substr(start));
  return out;
}

// The first `max` tokens of a statement: words upper-cased, quoted identifiers and string
// literals as written, other characters one each; comments skipped.
std::vector<std::string> HeadTokens(const std::string& sql, size_t max) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < sql.size() && out.size() < max) {
    char c = sql[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      i++;
      continue;
    }
    size_t skip = SkipQuoted(sql, i);
    if (skip != i) {
      if (c == '"' || c == '\'') out.push_back(sql.substr(i, skip - i));
      i = skip;
      continue;
    }
    if (IsIdentChar(c)) {
      size_t k = i;
      while (k < sql.size() && IsIdentChar(sql[k])) k++;
      std::string w = sql.substr(i, k - i);
      for (auto& ch : w) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      out.push_back(w);
      i = k;
      continue;
    }
    out.push_back(std::string(1, c));
    i++;
  }
  return out;
}

// A possibly schema-qualified name at tokens[*i], advancing *i past it.
std::string QualifiedName(const std::vector<std::string>& t, size_t* i) {
  if (*i >= t.size()) return "";
  std::string name = t[(*i)++];
  if (*i + 1 < t.size() && t[*i] == ".") {
    name += "." + t[*i + 1];
    *i += 2;
  }
  return name;
}

// Strips leading whitespace, comments (pg_dump's "-- Name: ...; Type: ..." headers) and psql
// meta-command lines.
std::string Body(const std::string& stmt) {
  size_t i = 0;
  while (i < stmt.size()) {
    if (std::isspace(static_cast<unsigned char>(stmt[i]))) {
      i++;
      continue;
    }
    if ((stmt[i] == '-' || stmt[i] == '/') && SkipQuoted(stmt, i) != i) {
      i = SkipQuoted(stmt, i);
      continue;
    }
    if (stmt[i] == '\\') {  // a psql meta-command line (pg_dump's \restrict): not SQL
      size_t e = stmt.find('\n', i);
      i = e == std::string::npos ? stmt.size() : e + 1;
      continue;
    }
    break;
  }
  return std::string(Trim(stmt.substr(i)));
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string Hex(uint64_t v) {
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::vector<PostDataStatement> SplitPostData(const std::string& script) {
  std::vector<PostDataStatement> out;
  // SET lines in force, by setting name, in the order first seen.
  std::vector<std::pair<std::string, std::string>> settings;
  for (const std::string& raw : SplitStatements(script)) {
    std::string sql = Body(raw);
    if (sql.empty()) continue;
    auto t = HeadTokens(sql, 16);
    if (t.empty()) continue;
    std::string setting;
    if (t[0] == "SET" && t.size() > 1) setting = t[1] == "SESSION" && t.size() > 2 ? t[2] : t[1];
    if (t[0] == "SELECT" && t.size() > 5 && t[1] == "PG_CATALOG" && t[3] == "SET_CONFIG") {
      setting = t[5];
    }
    if (!setting.empty()) {
      auto it = std::find_if(settings.begin(), settings.end(),
                             [&](const auto& p) { return p.first == setting; });
      if (it == settings.end()) {
        settings.emplace_back(setting, sql);
      } else {
        it->second = sql;
      }
      continue;
    }
    PostDataStatement st;
    st.sql = sql;
    for (const auto& [name, s] : settings) st.settings += s + "; ";
    size_t i = 0;
    if (t[0] == "CREATE" && (t.size() > 2 && (t[1] == "INDEX" || (t[1] == "UNIQUE" && t[2] == "INDEX")))) {
      st.wave = Wave::kIndex;
      auto on = std::find(t.begin(), t.end(), "ON");
      i = static_cast<size_t>(on - t.begin()) + 1;
      if (i < t.size() && t[i] == "ONLY") i++;
      st.table = QualifiedName(t, &i);
    } else if (t[0] == "ALTER" && t.size() > 2 && t[1] == "TABLE") {
      i = 2;
      if (i < t.size() && t[i] == "ONLY") i++;
      std::string table = QualifiedName(t, &i);
      if (i + 3 < t.size() && t[i] == "ADD" && t[i + 1] == "CONSTRAINT") {
        const std::string& what = t[i + 3];
        if (what == "PRIMARY" || what == "UNIQUE" || what == "EXCLUDE") {
          st.wave = Wave::kIndex;
          st.table = table;
        } else if (what == "FOREIGN") {
          st.wave = Wave::kForeignKey;
          st.table = table;
        }
      }
    } else if (t[0] == "ALTER" && t.size() > 2 && t[1] == "INDEX") {
      i = 2;
      QualifiedName(t, &i);
      if (i + 1 < t.size() && t[i] == "ATTACH" && t[i + 1] == "PARTITION") st.wave = Wave::kAttach;
    }
    st.key = std::to_string(out.size()) + ":" + Hex(Fnv1a(st.sql));
    out.push_back(std::move(st));
  }
  return out;
}

namespace {

// Index builds on tables smaller than this share a transaction (up to kBatch of them): a
// thousand small tables are a thousand round trips and commits otherwise.
constexpr int64_t kSmallTable = 1 << 20;
constexpr size_t kBatch = 64;

std::string Shorten(const std::string& sql) {
  return "`" + sql.substr(0, sql.find('\n')).substr(0, 160) + "`";
}

}  // namespace

Result<std::unique_ptr<PostDataBuilder>> PostDataBuilder::Start(const std::string& script,
                                                                const std::string& target_db_dsn,
                                                                const PostDataOptions& options) {
  if (options.ledger_table.empty()) return Status::Internal("post-data apply without a ledger");
  std::unique_ptr<PostDataBuilder> b(new PostDataBuilder(target_db_dsn, options));
  b->all_ = SplitPostData(script);
  PGSHIFT_ASSIGN_OR_RETURN(auto c, b->Session());
  PGSHIFT_RETURN_IF_ERROR(c->Exec("CREATE TABLE IF NOT EXISTS " + options.ledger_table +
                                  " (statement text PRIMARY KEY, "
                                  "done_at timestamptz NOT NULL DEFAULT now())"));
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult done_rows,
                           c->Query("SELECT statement FROM " + options.ledger_table));
  std::set<std::string> done;
  for (int i = 0; i < done_rows.rows(); ++i) done.insert(done_rows.Get(i, 0));
  std::string rest_keys;
  for (const auto& st : b->all_) {
    if (st.wave == Wave::kOther) rest_keys += st.key + ",";
  }
  // Wave 4 is one transaction: one ledger row for all of it.
  const bool rest_done = done.count("rest:" + Hex(Fnv1a(rest_keys))) > 0;
  for (const auto& st : b->all_) {
    if (st.wave == Wave::kOther ? rest_done : done.count(st.key) > 0) continue;
    b->total_++;
    if (st.sql.find(" NOT VALID") != std::string::npos) b->not_valid_++;
    if (st.wave == Wave::kIndex) {
      b->waiting_[st.table].push_back(&st);
    } else {
      b->later_[static_cast<int>(st.wave) - 2].push_back(&st);
    }
  }
  for (int i = 0; i < std::max(1, options.jobs); ++i) {
    b->workers_.emplace_back([p = b.get()] { p->IndexWorker(); });
  }
  return b;
}

PostDataBuilder::~PostDataBuilder() {
  {
    std::lock_guard<std::mutex> l(mu_);
    finishing_ = true;
    if (first_error_.ok()) first_error_ = Status::Aborted("post-data apply abandoned");
  }
  cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
}

Result<std::unique_ptr<pg::Connection>> PostDataBuilder::Session() const {
  PGSHIFT_ASSIGN_OR_RETURN(auto c, pg::Connection::Connect(dsn_, 10, "pgshift"));
  PGSHIFT_RETURN_IF_ERROR(
      c->Exec("SET statement_timeout = 0; SET lock_timeout = 0; SET synchronous_commit = off; "
              "SET default_transaction_read_only = off; SET maintenance_work_mem = " +
              c->QuoteLiteral(options_.maintenance_work_mem)));
  return c;
}

Status PostDataBuilder::Commit(pg::Connection& c, const std::vector<const PostDataStatement*>& batch,
                               const std::string& extra_key) {
  std::string sql = "BEGIN; ";
  for (const auto* st : batch) {
    sql += st->settings + st->sql + ";\n";
    if (extra_key.empty()) {
      sql += "INSERT INTO " + options_.ledger_table + " (statement) VALUES (" +
             c.QuoteLiteral(st->key) + "); ";
    }
  }
  if (!extra_key.empty()) {
    sql += "INSERT INTO " + options_.ledger_table + " (statement) VALUES (" +
           c.QuoteLiteral(extra_key) + "); ";
  }
  sql += "COMMIT";
  Status s;
  for (int attempt = 0; attempt < 5; ++attempt) {
    s = c.Exec(sql);
    if (s.ok()) {
      done_count_.fetch_add(static_cast<int>(batch.size()));
      return s;
    }
    const std::string state = c.last_sqlstate();
    (void)c.Exec("ROLLBACK");
    if (state != "40P01" && state != "40001") break;
  }
  return batch.size() == 1 ? s.WithContext(Shorten(batch[0]->sql)) : s;
}

void PostDataBuilder::Enqueue(const std::string& table, int64_t bytes) {
  auto it = waiting_.find(table);
  if (it == waiting_.end()) return;
  for (const auto* st : it->second) queue_.push_back({st, bytes});
  waiting_.erase(it);
  std::stable_sort(queue_.begin(), queue_.end(),
                   [](const Item& a, const Item& b) { return a.bytes < b.bytes; });
}

void PostDataBuilder::TableReady(const std::string& table, int64_t bytes) {
  {
    std::lock_guard<std::mutex> l(mu_);
    Enqueue(table, bytes);
  }
  cv_.notify_all();
}

void PostDataBuilder::IndexWorker() {
  std::unique_ptr<pg::Connection> c;
  while (true) {
    std::vector<const PostDataStatement*> batch;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return !queue_.empty() || finishing_ || !first_error_.ok(); });
      if (!first_error_.ok() || queue_.empty()) return;  // an error, or finishing with no work
      const bool small = queue_.back().bytes < kSmallTable;
      do {
        batch.push_back(queue_.back().st);
        queue_.pop_back();
      } while (small && batch.size() < kBatch && !queue_.empty() &&
               queue_.back().bytes < kSmallTable);
    }
    Status s;
    if (!c) {
      auto made = Session();
      if (made.ok()) c = std::move(*made);
      s = made.status();
    }
    if (s.ok()) s = Commit(*c, batch);
    if (!s.ok()) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (first_error_.ok()) first_error_ = s.WithContext("indexes");
      }
      cv_.notify_all();
      return;
    }
  }
}

// Runs `todo` with up to `jobs` sessions, each statement in its own transaction.
Status PostDataBuilder::RunWave(const std::vector<const PostDataStatement*>& todo, int jobs) {
  if (todo.empty()) return Status::Ok();
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first;
  auto work = [&]() {
    auto c = Session();
    Status s = c.status();
    while (s.ok()) {
      {
        std::lock_guard<std::mutex> l(mu);
        if (!first.ok()) return;
      }
      size_t i = next.fetch_add(1);
      if (i >= todo.size()) return;
      s = Commit(**c, {todo[i]});
    }
    std::lock_guard<std::mutex> l(mu);
    if (first.ok()) first = s;
  };
  std::vector<std::thread> threads;
  int n = std::max(1, std::min<int>(jobs, static_cast<int>(todo.size())));
  for (int i = 0; i < n; ++i) threads.emplace_back(work);
  for (auto& t : threads) t.join();
  return first;
}

Status PostDataBuilder::Finish() {
  std::vector<std::string> tables;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [table, sts] : waiting_) tables.push_back(table);
  }
  // Sizes of the tables no one reported (partitioned parents, materialized views, a resumed
  // apply): only an order, so a failure to read them (to_regclass raises on bad syntax before
  // PostgreSQL 16) leaves them unordered.
  std::map<std::string, int64_t> size;
  if (!tables.empty()) {
    if (auto c = Session(); c.ok()) {
      auto r = (*c)->Query(
          "SELECT t, coalesce(pg_relation_size(to_regclass(t)), 0) FROM unnest($1::text[]) AS t",
          {pg::TextArrayLiteral(tables)});
      for (int i = 0; r.ok() && i < r->rows(); ++i) size[r->Get(i, 0)] = std::stoll(r->Get(i, 1));
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& t : tables) Enqueue(t, size[t]);
    finishing_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  {
    std::lock_guard<std::mutex> l(mu_);
    PGSHIFT_RETURN_IF_ERROR(first_error_);
  }
  PGSHIFT_RETURN_IF_ERROR(RunWave(later_[0], 1).WithContext("partition indexes"));
  PGSHIFT_RETURN_IF_ERROR(RunWave(later_[1], options_.jobs).WithContext("foreign keys"));
  PGSHIFT_ASSIGN_OR_RETURN(auto c, Session());
  if (!later_[2].empty()) {
    std::string rest_keys;
    for (const auto& st : all_) {
      if (st.wave == Wave::kOther) rest_keys += st.key + ",";
    }
    PGSHIFT_RETURN_IF_ERROR(Commit(*c, later_[2], "rest:" + Hex(Fnv1a(rest_keys)))
                                .WithContext("triggers, rules, policies and the rest"));
  }
  // A commit that waits for the WAL flush, and with it every commit before.
  return c->Exec("SET synchronous_commit = on; SELECT pg_catalog.txid_current()");
}

Status ApplyPostData(const std::string& script, const std::string& target_db_dsn,
                     const PostDataOptions& options) {
  PGSHIFT_ASSIGN_OR_RETURN(auto b, PostDataBuilder::Start(script, target_db_dsn, options));
  return b->Finish();
}

}  // namespace pgshift::engine
