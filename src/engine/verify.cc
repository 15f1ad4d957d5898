#include "engine/verify.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "common/clock.h"
#include "common/strings.h"
#include "pg/connection.h"
#include "pg/conninfo.h"

namespace pgshift::engine {
namespace {

using pg::Connection;
using pg::QueryResult;

// Every setting that changes how a value is rendered as text, pinned to one value on both
// servers; the session is read-only so that a bug here cannot write.
constexpr char kSessionSetup[] =
    "SET default_transaction_read_only = on; "
    "SET TimeZone = 'UTC'; "
    "SET DateStyle = 'ISO, YMD'; "
    "SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 1; "
    "SET bytea_output = 'hex'; "
    "SET lc_monetary = 'C'; "
    "SET statement_timeout = 0; "
    "SET search_path = pg_catalog";

// One row per column of every compared table (a table without columns gives one row with
// NULL column), in column order. pk_position is the column's place in the primary key.
constexpr char kTablesSql[] = R"(
SELECT n.nspname AS schema, c.relname AS table, a.attname AS column,
       ty.typcategory AS category,
       array_position(i.indkey::int2[], a.attnum) AS pk_position
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND n.nspname NOT LIKE '\_pgshift%'
ORDER BY n.nspname, c.relname, a.attnum)";

struct Column {
  std::string name;
  bool numeric = false;  // rendered unquoted in a key
};

struct TableShape {
  std::vector<Column> columns;
  std::vector<std::string> pk;  // primary-key column names in key order; empty: none
};

using TableName = std::pair<std::string, std::string>;  // schema, table
using Catalog = std::map<TableName, TableShape>;

struct Side {
  const char* name;  // "source" / "target"
  std::unique_ptr<Connection> conn;
  // md5() hashes the server-encoding bytes; when the two servers' encodings differ, hash the
  // UTF-8 form on both so equal text gives equal hashes.
  bool to_utf8 = false;
};

Status SideError(const Side& side, const std::string& db, const Status& s) {
  return s.WithContext(std::string(side.name) + " database \"" + db + "\"");
}

Result<Catalog> LoadCatalog(Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(QueryResult r, conn.Query(kTablesSql));
  Catalog catalog;
  std::map<TableName, std::map<long long, std::string>> pk_by_position;
  for (int i = 0; i < r.rows(); ++i) {
    TableName name{r.Get(i, "schema"), r.Get(i, "table")};
    TableShape& shape = catalog[name];
    auto column = r.GetOpt(i, "column");
    if (!column) continue;
    shape.columns.push_back({*column, r.Get(i, "category") == "N"});
    if (auto pos = r.GetOpt(i, "pk_position")) {
      pk_by_position[name][std::strtoll(pos->c_str(), nullptr, 10)] = *column;
    }
  }
  for (auto& [name, cols] : pk_by_position) {
    for (auto& [pos, col] : cols) catalog[name].pk.push_back(col);
  }
  return catalog;
}

// SQL text for one table on one side. Built from the source's shape, so both sides hash the
// same columns in the same order.
class TableSql {
 public:
  TableSql(const Side& side, const TableName& name, const TableShape& shape)
      : to_utf8_(side.to_utf8) {
    const Connection& c = *side.conn;
    from_ = " FROM ONLY " + c.QuoteIdent(name.first) + "." + c.QuoteIdent(name.second) + " t";
    std::vector<std::string> cols;
    for (const Column& col : shape.columns) cols.push_back("t." + c.QuoteIdent(col.name));
    std::string row_text = "ROW(" + Join(cols, ", ") + ")::text";
    row_md5_ = Md5(row_text);
    // The first 64 bits of the row's md5 as a bigint. sum(bigint) is numeric, summed in
    // 128 bits: no overflow, and cheaper than summing numerics.
    row_hash_ = "('x' || substr(" + row_md5_ + ", 1, 16))::bit(64)::bigint";
    if (!shape.pk.empty()) {
      std::vector<std::string> parts;
      for (const std::string& k : shape.pk) {
        auto it = std::find_if(shape.columns.begin(), shape.columns.end(),
                               [&](const Column& col) { return col.name == k; });
        std::string ref = "t." + c.QuoteIdent(k) + "::text";
        parts.push_back(it != shape.columns.end() && it->numeric ? ref
                                                                 : "quote_literal(" + ref + ")");
      }
      key_text_ = "'(' || " + Join(parts, " || ',' || ") + " || ')'";
    }
  }

  std::string Count() const { return "SELECT count(*)" + from_; }
  std::string Checksum() const {
    return "SELECT count(*), coalesce(sum(" + row_hash_ + "), 0)" + from_;
  }
  // Per bucket of the primary key's hash: count and checksum.
  std::string Buckets(int64_t buckets) const {
    return "SELECT b, count(*), sum(h) FROM (SELECT " + Bucket(buckets) + " AS b, " + row_hash_ +
           " AS h" + from_ + ") x GROUP BY b";
  }
  // Key text and row hash (or '' when only existence counts) of every row in the buckets $1
  // (a bigint[] literal).
  std::string Rows(int64_t buckets, bool hashes) const {
    return "SELECT " + key_text_ + ", " + (hashes ? row_md5_ : "''") + from_ + " WHERE " +
           Bucket(buckets) + " = ANY($1::bigint[])";
  }
  // The same for the rows whose key text is in $1 (a text[]).
  std::string RowsByKey(bool hashes) const {
    return "SELECT k, h FROM (SELECT " + key_text_ + " AS k, " + (hashes ? row_md5_ : "''") +
           " AS h" + from_ + ") x WHERE k = ANY($1::text[])";
  }

 private:
  std::string Md5(const std::string& text) const {
    return to_utf8_ ? "md5(convert_to(" + text + ", 'UTF8'))" : "md5(" + text + ")";
  }
  std::string Bucket(int64_t buckets) const {
    return "(('x' || substr(" + Md5(key_text_) + ", 1, 8))::bit(32)::bigint % " +
           std::to_string(buckets) + ")";
  }

  bool to_utf8_;
  std::string from_, row_md5_, row_hash_, key_text_;
};

// Runs one query per side at the same time: halves the wall time and narrows the window in
// which replication can move one side but not the other.
std::pair<Result<QueryResult>, Result<QueryResult>> QueryBoth(
    Side& src, const std::string& src_sql, Side& tgt, const std::string& tgt_sql,
    const std::vector<pg::Param>& params = {}) {
  Result<QueryResult> src_res = Status::Internal("not run");
  std::thread worker([&] { src_res = src.conn->Query(src_sql, params); });
  Result<QueryResult> tgt_res = tgt.conn->Query(tgt_sql, params);
  worker.join();
  return {std::move(src_res), std::move(tgt_res)};
}

// Orders "(9)" before "(10)": runs of digits compare as numbers.
bool NaturalLess(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t ie = i, je = j;
      while (ie < a.size() && digit(a[ie])) ++ie;
      while (je < b.size() && digit(b[je])) ++je;
      std::string_view na(a.data() + i, ie - i), nb(b.data() + j, je - j);
      while (na.size() > 1 && na[0] == '0') na.remove_prefix(1);
      while (nb.size() > 1 && nb[0] == '0') nb.remove_prefix(1);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      if (ie - i != je - j) return ie - i < je - j;  // "7" before "07"
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

struct Pending {
  TableName name;
  TableShape shape;  // the source's
  TableVerification result;
};

class DatabaseVerifier {
 public:
  DatabaseVerifier(std::string db, Side src, Side tgt, const VerifyOptions& options)
      : db_(std::move(db)), src_(std::move(src)), tgt_(std::move(tgt)), options_(options) {}

  Result<std::vector<TableVerification>> Run() {
    PGSHIFT_ASSIGN_OR_RETURN(Catalog src_catalog, OnSide(src_, LoadCatalog(*src_.conn)));
    PGSHIFT_ASSIGN_OR_RETURN(Catalog tgt_catalog, OnSide(tgt_, LoadCatalog(*tgt_.conn)));

    std::vector<Pending> pending;
    std::set<TableName> names;
    for (const auto& [name, shape] : src_catalog) names.insert(name);
    for (const auto& [name, shape] : tgt_catalog) names.insert(name);
    for (const TableName& name : names) {
      TableVerification v;
      v.database = db_;
      v.schema = name.first;
      v.table = name.second;
      auto s = src_catalog.find(name);
      auto t = tgt_catalog.find(name);
      if (s == src_catalog.end() || t == tgt_catalog.end()) {
        v.note = s == src_catalog.end() ? "missing on source" : "missing on target";
        Finish(std::move(v));
        continue;
      }
      std::string diff = ColumnDifference(s->second, t->second);
      if (!diff.empty()) {
        v.note = diff;
        Finish(std::move(v));
        continue;
      }
      pending.push_back({name, s->second, std::move(v)});
    }

    // Round 1 compares whole tables, both sides at once: most tables match here.
    std::vector<Pending> differing;
    for (Pending& p : pending) {
      PGSHIFT_RETURN_IF_ERROR(Compare(p, /*settle_between=*/false));
      if (p.result.match) {
        Finish(std::move(p.result));
      } else {
        differing.push_back(std::move(p));
      }
    }
    // What differs may only be in flight. Later reads go source first, then settle (the
    // target has applied everything committed so far), then target: a row equal on both sides
    // then is really copied. Tables with a key converge row by row, since a table that takes
    // writes all the time never matches as a whole; the rows still differing after the last
    // round are the real differences.
    for (Pending& p : differing) {
      if (!p.shape.pk.empty()) {
        PGSHIFT_RETURN_IF_ERROR(Converge(p));
      } else {
        for (int round = 2; round <= std::max(1, options_.max_rounds) && !p.result.match; ++round) {
          PGSHIFT_RETURN_IF_ERROR(Compare(p, /*settle_between=*/true));
        }
        if (!p.result.match) p.result.note += "; no primary key: differing rows not located";
      }
      Finish(std::move(p.result));
    }
    std::sort(done_.begin(), done_.end(), [](const auto& a, const auto& b) {
      return std::tie(a.schema, a.table) < std::tie(b.schema, b.table);
    });
    return std::move(done_);
  }

 private:
  template <typename T>
  Result<T> OnSide(const Side& side, Result<T> r) {
    if (!r.ok()) return SideError(side, db_, r.status());
    return r;
  }

  static std::string ColumnDifference(const TableShape& src, const TableShape& tgt) {
    std::set<std::string> s, t;
    for (const Column& c : src.columns) s.insert(c.name);
    for (const Column& c : tgt.columns) t.insert(c.name);
    std::vector<std::string> only_src, only_tgt;
    std::set_difference(s.begin(), s.end(), t.begin(), t.end(), std::back_inserter(only_src));
    std::set_difference(t.begin(), t.end(), s.begin(), s.end(), std::back_inserter(only_tgt));
    std::vector<std::string> parts;
    if (!only_src.empty()) parts.push_back("only on source: " + Join(only_src, ", "));
    if (!only_tgt.empty()) parts.push_back("only on target: " + Join(only_tgt, ", "));
    return parts.empty() ? "" : "columns differ (" + Join(parts, "; ") + ")";
  }

  Status QueryError(const Side& side, const TableName& name, const Status& s) {
    return SideError(side, db_, s).WithContext("verifying " + name.first + "." + name.second);
  }

  // Source, then settle, then target: the target read sees at least what the source read saw.
  Result<std::pair<QueryResult, QueryResult>> SourceThenTarget(
      const TableName& name, const std::string& src_sql, const std::string& tgt_sql,
      const std::vector<pg::Param>& params = {}) {
    auto sr = src_.conn->Query(src_sql, params);
    if (!sr.ok()) return QueryError(src_, name, sr.status());
    if (options_.settle) {
      Status s = options_.settle();
      if (!s.ok()) return s.WithContext("waiting for replication while verifying");
    }
    auto tr = tgt_.conn->Query(tgt_sql, params);
    if (!tr.ok()) return QueryError(tgt_, name, tr.status());
    return std::make_pair(std::move(*sr), std::move(*tr));
  }

  Status Compare(Pending& p, bool settle_between) {
    int64_t start = MonotonicMicros();
    TableVerification& v = p.result;
    ++v.rounds;
    TableSql src_sql(src_, p.name, p.shape), tgt_sql(tgt_, p.name, p.shape);
    bool checksum = options_.level == VerifyLevel::kChecksum;
    std::string sq = checksum ? src_sql.Checksum() : src_sql.Count();
    std::string tq = checksum ? tgt_sql.Checksum() : tgt_sql.Count();
    Result<QueryResult> sr = Status::Internal("not run"), tr = Status::Internal("not run");
    if (settle_between) {
      auto both = SourceThenTarget(p.name, sq, tq);
      if (!both.ok()) return both.status();
      sr = std::move(both->first);
      tr = std::move(both->second);
    } else {
      std::tie(sr, tr) = QueryBoth(src_, sq, tgt_, tq);
    }
    if (!sr.ok()) return QueryError(src_, p.name, sr.status());
    if (!tr.ok()) return QueryError(tgt_, p.name, tr.status());
    v.source_rows = std::strtoll(sr->Get(0, 0).c_str(), nullptr, 10);
    v.target_rows = std::strtoll(tr->Get(0, 0).c_str(), nullptr, 10);
    if (checksum) {
      v.source_checksum = sr->Get(0, 1);
      v.target_checksum = tr->Get(0, 1);
    }
    v.match = v.source_rows == v.target_rows && v.source_checksum == v.target_checksum;
    v.note = v.match                          ? ""
             : v.source_rows != v.target_rows ? "row count differs"
                                              : "row contents differ";
    v.seconds += static_cast<double>(MonotonicMicros() - start) / 1e6;
    return Status::Ok();
  }

  // Row by row for a table with a key: differing buckets of the key's hash, then the rows in
  // them, then only the rows that still differ, until none is left or the rounds run out.
  // At count level only keys count (a row present on both sides matches).
  Status Converge(Pending& p) {
    TableVerification& v = p.result;
    int64_t start = MonotonicMicros();
    bool hashes = options_.level == VerifyLevel::kChecksum;
    // About 256 rows per bucket: few rows to read per differing bucket, few buckets to return.
    int64_t rows = std::max(v.source_rows, v.target_rows);
    int64_t buckets = 64;
    while (buckets < 65536 && buckets * 256 < rows) buckets *= 2;
    TableSql src_sql(src_, p.name, p.shape), tgt_sql(tgt_, p.name, p.shape);

    ++v.rounds;
    PGSHIFT_ASSIGN_OR_RETURN(auto b, SourceThenTarget(p.name, src_sql.Buckets(buckets),
                                                      tgt_sql.Buckets(buckets)));
    auto bucket_map = [hashes](const QueryResult& r) {
      std::map<long long, std::pair<std::string, std::string>> m;
      for (int i = 0; i < r.rows(); ++i) {
        m[std::strtoll(r.Get(i, 0).c_str(), nullptr, 10)] = {r.Get(i, 1), hashes ? r.Get(i, 2) : ""};
      }
      return m;
    };
    auto src_buckets = bucket_map(b.first), tgt_buckets = bucket_map(b.second);
    std::vector<std::string> wanted;
    for (const auto& [bk, agg] : src_buckets) {
      auto it = tgt_buckets.find(bk);
      if (it == tgt_buckets.end() || it->second != agg) wanted.push_back(std::to_string(bk));
    }
    for (const auto& [bk, agg] : tgt_buckets) {
      if (!src_buckets.count(bk)) wanted.push_back(std::to_string(bk));
    }
    // A multimap: a key seen twice (no unique index on the target) must still count twice.
    auto row_map = [](const QueryResult& r) {
      std::map<std::string, std::multiset<std::string>> m;
      for (int i = 0; i < r.rows(); ++i) m[r.Get(i, 0)].insert(r.Get(i, 1));
      return m;
    };
    auto differing_keys = [&](const QueryResult& sr, const QueryResult& tr) {
      auto src_rows = row_map(sr), tgt_rows = row_map(tr);
      std::set<std::string, decltype(&NaturalLess)> keys(&NaturalLess);
      for (const auto& [k, h] : src_rows) {
        auto it = tgt_rows.find(k);
        if (it == tgt_rows.end() || it->second != h) keys.insert(k);
      }
      for (const auto& [k, h] : tgt_rows) {
        if (!src_rows.count(k)) keys.insert(k);
      }
      return keys;
    };
    std::set<std::string, decltype(&NaturalLess)> keys(&NaturalLess);
    if (!wanted.empty()) {
      ++v.rounds;
      std::vector<pg::Param> params{"{" + Join(wanted, ",") + "}"};
      PGSHIFT_ASSIGN_OR_RETURN(auto r, SourceThenTarget(p.name, src_sql.Rows(buckets, hashes),
                                                        tgt_sql.Rows(buckets, hashes), params));
      keys = differing_keys(r.first, r.second);
    }
    for (int round = 0; round < std::max(1, options_.max_rounds) && !keys.empty(); ++round) {
      ++v.rounds;
      std::string arr = pg::TextArrayLiteral(std::vector<std::string>(keys.begin(), keys.end()));
      PGSHIFT_ASSIGN_OR_RETURN(auto r, SourceThenTarget(p.name, src_sql.RowsByKey(hashes),
                                                        tgt_sql.RowsByKey(hashes), {arr}));
      keys = differing_keys(r.first, r.second);
    }
    v.match = keys.empty();
    if (v.match) {
      // The counts shown are round 1's, taken while the table was changing.
      v.note = "matched row by row (the table kept changing)";
    } else {
      for (const std::string& k : keys) {
        if (v.differing_keys.size() == static_cast<size_t>(kMaxDifferingKeys)) break;
        v.differing_keys.push_back(k);
      }
      v.note += keys.size() > v.differing_keys.size()
                    ? "; at least " + std::to_string(v.differing_keys.size()) + " rows differ"
                    : "; " + std::to_string(keys.size()) + " differing row" +
                          (keys.size() == 1 ? "" : "s");
    }
    v.seconds += static_cast<double>(MonotonicMicros() - start) / 1e6;
    return Status::Ok();
  }

  void Finish(TableVerification v) {
    if (options_.on_table) options_.on_table(v);
    done_.push_back(std::move(v));
  }

  std::string db_;
  Side src_, tgt_;
  const VerifyOptions& options_;
  std::vector<TableVerification> done_;
};

Result<Side> OpenSide(const char* name, const std::string& dsn, const std::string& db) {
  Side side{name, nullptr};
  auto fail = [&](const Status& s) { return SideError(side, db, s); };
  auto db_dsn = pg::DsnForDatabase(dsn, db);
  if (!db_dsn.ok()) return fail(db_dsn.status());
  auto conn = Connection::Connect(*db_dsn, 10, "pgshift verify");
  if (!conn.ok()) return fail(conn.status());
  side.conn = std::move(*conn);
  Status s = side.conn->Exec(kSessionSetup);
  if (!s.ok()) return fail(s.WithContext("preparing session"));
  return side;
}

std::string Cell(int64_t n) { return n < 0 ? "-" : std::to_string(n); }

}  // namespace

Result<VerifyLevel> ParseVerifyLevel(const std::string& text) {
  std::string t = ToLower(Trim(text));
  if (t == "none") return VerifyLevel::kNone;
  if (t == "count") return VerifyLevel::kCount;
  if (t == "checksum") return VerifyLevel::kChecksum;
  return Status::InvalidArgument("unknown verify level \"" + text +
                                 "\" (want none, count or checksum)");
}

std::string VerifyLevelName(VerifyLevel level) {
  switch (level) {
    case VerifyLevel::kNone: return "none";
    case VerifyLevel::kCount: return "count";
    case VerifyLevel::kChecksum: return "checksum";
  }
  return "unknown";
}

int64_t VerifyReport::mismatches() const {
  return std::count_if(tables.begin(), tables.end(),
                       [](const TableVerification& t) { return !t.match; });
}

std::string VerifyReport::Render() const {
  constexpr size_t kKeysShown = 5;
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"DATABASE", "TABLE", "SOURCE ROWS", "TARGET ROWS", "ROUNDS", "RESULT", "NOTE"});
  for (const TableVerification& t : tables) {
    std::string note = t.note;
    if (!t.differing_keys.empty()) {
      std::vector<std::string> shown(
          t.differing_keys.begin(),
          t.differing_keys.begin() + std::min(kKeysShown, t.differing_keys.size()));
      note += "; keys: " + Join(shown, ", ");
      if (t.differing_keys.size() > kKeysShown) note += ", ...";
    }
    rows.push_back({t.database, t.schema + "." + t.table, Cell(t.source_rows), Cell(t.target_rows),
                    std::to_string(t.rounds), t.match ? "ok" : "MISMATCH", note});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      bool right = i >= 2 && i <= 4;  // numbers
      std::string pad(width[i] - r[i].size(), ' ');
      if (i) line += "  ";
      line += right ? pad + r[i] : (i + 1 == r.size() ? r[i] : r[i] + pad);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  int64_t bad = mismatches();
  out += std::to_string(tables.size()) + " table" + (tables.size() == 1 ? "" : "s") +
         " verified (" + VerifyLevelName(level) + "): " +
         (bad == 0 ? "all match" : std::to_string(bad) + " mismatch" + (bad == 1 ? "" : "es")) +
         "\n";
  return out;
}

nlohmann::json VerifyReport::ToJson() const {
  auto count = [](int64_t n) { return n < 0 ? nlohmann::json(nullptr) : nlohmann::json(n); };
  nlohmann::json list = nlohmann::json::array();
  for (const TableVerification& t : tables) {
    list.push_back({{"database", t.database},
                    {"schema", t.schema},
                    {"table", t.table},
                    {"source_rows", count(t.source_rows)},
                    {"target_rows", count(t.target_rows)},
                    {"source_checksum", t.source_checksum},
                    {"target_checksum", t.target_checksum},
                    {"match", t.match},
                    {"differing_keys", t.differing_keys},
                    {"rounds", t.rounds},
                    {"note", t.note},
                    {"seconds", t.seconds}});
  }
  return {{"level", VerifyLevelName(level)},
          {"clean", clean()},
          {"tables_verified", tables.size()},
          {"mismatches", mismatches()},
          {"tables", std::move(list)}};
}

Result<VerifyReport> VerifyDatabases(const std::string& source_dsn, const std::string& target_dsn,
                                     const VerifyOptions& options) {
  if (options.databases.empty()) {
    return Status::InvalidArgument("verify: no database given");
  }
  VerifyReport report;
  report.level = options.level;
  if (options.level == VerifyLevel::kNone) return report;
  for (const std::string& db : options.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(Side src, OpenSide("source", source_dsn, db));
    PGSHIFT_ASSIGN_OR_RETURN(Side tgt, OpenSide("target", target_dsn, db));
    auto src_enc = src.conn->QueryValue("SHOW server_encoding");
    if (!src_enc.ok()) return SideError(src, db, src_enc.status());
    auto tgt_enc = tgt.conn->QueryValue("SHOW server_encoding");
    if (!tgt_enc.ok()) return SideError(tgt, db, tgt_enc.status());
    src.to_utf8 = tgt.to_utf8 = *src_enc != *tgt_enc;
    DatabaseVerifier verifier(db, std::move(src), std::move(tgt), options);
    PGSHIFT_ASSIGN_OR_RETURN(auto tables, verifier.Run());
    for (auto& t : tables) report.tables.push_back(std::move(t));
  }
  return report;
}

}  // namespace pgshift::engine
