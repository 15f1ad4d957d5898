#include "engine/verify_plan.h"

#include <algorithm>
#include <cmath>

#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::engine::verify {
namespace {

// A fixed 64-bit value per column position that stands for NULL in the typed hash: the
// hash functions return NULL for NULL, and XOR must not lose the column.
int64_t NullStandIn(size_t position) {
  uint64_t z = 0x9E3779B97F4A7C15ull * (position + 1);  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int64_t>(z);
}

// The server's extended hash of one column whose type makes equal values have equal text;
// empty when the column is hashed through its text form.
std::string TypedHash(const Column& c, const std::string& ref, size_t seed) {
  const std::string s = std::to_string(seed);
  const std::string& b = c.builtin;
  if (b == "int2") return "hashint2extended(" + ref + ", " + s + ")";
  if (b == "int4") return "hashint4extended(" + ref + ", " + s + ")";
  if (b == "int8") return "hashint8extended(" + ref + ", " + s + ")";
  if (b == "oid") return "hashoidextended(" + ref + ", " + s + ")";
  if (b == "bool") return "hashint4extended(" + ref + "::pg_catalog.int4, " + s + ")";
  if (b == "char") return "hashcharextended(" + ref + ", " + s + ")";
  if (b == "uuid") return "uuid_hash_extended(" + ref + ", " + s + ")";
  if (b == "timestamp") return "timestamp_hash_extended(" + ref + ", " + s + ")";
  // The same instant is the same text under verification's pinned TimeZone = UTC.
  if (b == "timestamptz") {
    return "timestamp_hash_extended(" + ref + " AT TIME ZONE 'UTC', " + s + ")";
  }
  if (b == "time") return "time_hash_extended(" + ref + ", " + s + ")";
  // Text types hash their bytes only under a deterministic collation (a nondeterministic one
  // makes different strings equal). char(n) is stored padded to n, so its hash (which ignores
  // trailing blanks) sees what its text shows; bpchar without a length is not.
  if (c.deterministic && (b == "text" || b == "varchar")) {
    return "hashtextextended(" + ref + ", " + s + ")";
  }
  if (c.deterministic && b == "bpchar" && c.typmod > 0) {
    return "hashbpcharextended(" + ref + ", " + s + ")";
  }
  return "";
}

std::string QuoteLiteralText(const std::string& v) {
  std::string out;
  bool backslash = v.find('\\') != std::string::npos;
  out += backslash ? "E'" : "'";
  for (char ch : v) {
    if (ch == '\'') out += '\'';
    if (ch == '\\') out += '\\';
    out += ch;
  }
  return out + "'";
}

}  // namespace

std::string HashMethodName(HashMethod m) {
  switch (m) {
    case HashMethod::kTyped: return "hashextended";
    case HashMethod::kMd5: return "md5";
    case HashMethod::kSha256: return "sha256";
  }
  return "unknown";
}

Result<HashMethod> ParseHashMethod(const std::string& name) {
  for (HashMethod m : {HashMethod::kTyped, HashMethod::kMd5, HashMethod::kSha256}) {
    if (name == HashMethodName(m)) return m;
  }
  return Status::InvalidArgument("unknown hash method \"" + name +
                                 "\" (want hashextended, md5 or sha256)");
}

HashMethod ChooseHashMethod(const HashProbe& source, const HashProbe& target) {
  if (source.encoding == target.encoding && source.hash && target.hash &&
      *source.hash == *target.hash) {
    return HashMethod::kTyped;
  }
  return source.md5 && target.md5 ? HashMethod::kMd5 : HashMethod::kSha256;
}

std::vector<KeyRange> SplitRange(const KeyRange& r, const std::vector<KeyValues>& points) {
  std::vector<KeyRange> out;
  std::optional<KeyValues> lo = r.lo;
  for (const KeyValues& p : points) {
    out.push_back({lo, p});
    lo = p;
  }
  out.push_back({lo, r.hi});
  return out;
}

std::vector<KeyValues> PickCutPoints(const std::vector<KeyValues>& sorted_sample, int64_t parts) {
  std::vector<KeyValues> out;
  if (parts <= 1 || sorted_sample.empty()) return out;
  const double step = static_cast<double>(sorted_sample.size()) / static_cast<double>(parts);
  size_t last = 0;
  for (int64_t j = 1; j < parts; ++j) {
    auto at = static_cast<size_t>(std::floor(step * static_cast<double>(j)));
    if (at == 0 || at >= sorted_sample.size() || (!out.empty() && at == last)) continue;
    if (!out.empty() && sorted_sample[at] == out.back()) continue;
    out.push_back(sorted_sample[at]);
    last = at;
  }
  return out;
}

std::string KeyText(const TableShape& shape, const KeyValues& key) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < key.size(); ++i) {
    bool numeric = i < shape.key.size() && shape.columns[shape.key[i]].numeric;
    parts.push_back(numeric ? key[i] : QuoteLiteralText(key[i]));
  }
  return "(" + Join(parts, ",") + ")";
}

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

TableQueries::TableQueries(const std::string& schema, const std::string& table,
                           const TableShape& shape, HashMethod method, bool hashes,
                           const Quoter& quote)
    : shape_(shape) {
  from_ = " FROM ONLY " + quote(schema) + "." + quote(table) + " t";
  std::vector<std::string> cols, typed;
  for (size_t i = 0; i < shape.columns.size(); ++i) {
    const Column& c = shape.columns[i];
    std::string ref = "t." + quote(c.name);
    cols.push_back(ref);
    std::string h = TypedHash(c, ref, i);
    if (h.empty()) h = "hashtextextended(" + ref + "::pg_catalog.text, " + std::to_string(i) + ")";
    typed.push_back("coalesce(" + h + ", " + std::to_string(NullStandIn(i)) + ")");
  }
  row_text_ = "ROW(" + Join(cols, ", ") + ")::pg_catalog.text";
  const std::string utf8 = "convert_to(" + row_text_ + ", 'UTF8')";
  if (!hashes) {
    row_hash_ = "0::pg_catalog.int8";
  } else if (method == HashMethod::kTyped) {
    row_hash_ = typed.empty() ? "0::pg_catalog.int8" : "(" + Join(typed, " # ") + ")";
  } else {
    std::string hex =
        method == HashMethod::kMd5 ? "md5(" + utf8 + ")" : "encode(sha256(" + utf8 + "), 'hex')";
    row_hash_ = "('x' || substr(" + hex + ", 1, 16))::bit(64)::pg_catalog.int8";
  }
  for (size_t k : shape.key) {
    const Column& c = shape.columns[k];
    key_cols_.push_back("t." + quote(c.name));
    key_types_.push_back(quote(c.type_schema) + "." + quote(c.type_name));
  }
}

std::string TableQueries::KeyList() const { return Join(key_cols_, ", "); }

std::string TableQueries::KeyTuple() const {
  return key_cols_.size() == 1 ? key_cols_[0] : "(" + KeyList() + ")";
}

std::string TableQueries::KeyCasts(size_t first_param, bool arrays) const {
  std::vector<std::string> parts;
  for (size_t i = 0; i < key_types_.size(); ++i) {
    parts.push_back("$" + std::to_string(first_param + i) + "::" + key_types_[i] +
                    (arrays ? "[]" : ""));
  }
  return parts.size() == 1 ? parts[0] : "(" + Join(parts, ", ") + ")";
}

std::string TableQueries::Where(const KeyRange& r, std::vector<pg::Param>* params) const {
  std::vector<std::string> conds;
  if (r.lo) {
    conds.push_back(KeyTuple() + " >= " + KeyCasts(params->size() + 1, false));
    params->insert(params->end(), r.lo->begin(), r.lo->end());
  }
  if (r.hi) {
    conds.push_back(KeyTuple() + " < " + KeyCasts(params->size() + 1, false));
    params->insert(params->end(), r.hi->begin(), r.hi->end());
  }
  return conds.empty() ? "" : " WHERE " + Join(conds, " AND ");
}

Sql TableQueries::Aggregate(const KeyRange& r) const {
  Sql q;
  q.text = "SELECT count(*), coalesce(sum(" + row_hash_ + "), 0)" + from_ + Where(r, &q.params);
  return q;
}

Sql TableQueries::RangeRows(const KeyRange& r) const {
  Sql q;
  q.text = "SELECT " + KeyList() + ", t.xmin::pg_catalog.text, " + row_hash_ + from_ +
           Where(r, &q.params);
  return q;
}

Sql TableQueries::RowsByKey(const std::vector<KeyValues>& keys) const {
  Sql q;
  for (size_t col = 0; col < key_cols_.size(); ++col) {
    std::vector<std::string> values;
    values.reserve(keys.size());
    for (const KeyValues& k : keys) values.push_back(k[col]);
    q.params.emplace_back(pg::TextArrayLiteral(values));
  }
  std::string where = key_cols_.size() == 1
                          ? key_cols_[0] + " = ANY(" + KeyCasts(1, true) + ")"
                          : KeyTuple() + " IN (SELECT * FROM unnest" + KeyCasts(1, true) + ")";
  q.text =
      "SELECT " + KeyList() + ", t.xmin::pg_catalog.text, " + row_hash_ + from_ + " WHERE " + where;
  return q;
}

Sql TableQueries::CutPoints(const KeyRange& r, int64_t step) const {
  Sql q;
  std::vector<std::string> named, outer;
  for (size_t i = 0; i < key_cols_.size(); ++i) {
    named.push_back(key_cols_[i] + " AS k" + std::to_string(i));
    outer.push_back("k" + std::to_string(i));
  }
  std::string where = Where(r, &q.params);
  q.params.emplace_back(std::to_string(std::max<int64_t>(step, 1)));
  q.text = "SELECT " + Join(outer, ", ") + " FROM (SELECT " + Join(named, ", ") +
           ", row_number() OVER (ORDER BY " + KeyList() + ") AS rn" + from_ + where +
           ") x WHERE rn % $" + std::to_string(q.params.size()) + "::pg_catalog.int8 = 0";
  return q;
}

Sql TableQueries::SampleKeys(double percent) const {
  char pct[32];
  snprintf(pct, sizeof pct, "%.6f", std::clamp(percent, 0.000001, 100.0));
  return {"SELECT " + KeyList() + from_ + " TABLESAMPLE SYSTEM ($1::pg_catalog.float4) ORDER BY " +
              KeyList(),
          {std::string(pct)}};
}

Sql TableQueries::HashBuckets(int64_t buckets) const {
  return {"SELECT h & $1::pg_catalog.int8, count(*), sum(h) FROM (SELECT " + row_hash_ + " AS h" +
              from_ + ") x GROUP BY 1",
          {std::to_string(buckets - 1)}};
}

Sql TableQueries::HashesInBuckets(int64_t buckets, const std::vector<int64_t>& which) const {
  std::vector<std::string> items;
  for (int64_t b : which) items.push_back(std::to_string(b));
  return {"SELECT h::pg_catalog.text, count(*) FROM (SELECT " + row_hash_ + " AS h" + from_ +
              ") x WHERE (h & $1::pg_catalog.int8) = ANY($2::pg_catalog.int8[]) GROUP BY h",
          {std::to_string(buckets - 1), "{" + Join(items, ",") + "}"}};
}

Sql TableQueries::RowTexts(const std::vector<std::string>& hashes, int limit) const {
  return {"SELECT DISTINCT ON (h) h::pg_catalog.text, r FROM (SELECT " + row_hash_ + " AS h, " +
              row_text_ + " AS r" + from_ +
              ") x WHERE h = ANY($1::pg_catalog.int8[]) ORDER BY h LIMIT " + std::to_string(limit),
          {"{" + Join(hashes, ",") + "}"}};
}

bool HashSum::Add(const std::string& numeric) {
  std::string_view s = numeric;
  bool negative = !s.empty() && s[0] == '-';
  if (negative) s.remove_prefix(1);
  if (s.empty() || s.size() > 38) return false;
  Int128 v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  v_ += negative ? -v : v;
  return true;
}

std::string HashSum::ToString() const {
  if (v_ == 0) return "0";
  bool negative = v_ < 0;
  UInt128 u = negative ? -static_cast<UInt128>(v_) : static_cast<UInt128>(v_);
  std::string out;
  while (u > 0) {
    out.push_back(static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  }
  if (negative) out.push_back('-');
  return std::string(out.rbegin(), out.rend());
}

RowVerdict ClassifyRow(const std::vector<RowObservation>& source,
                       const std::vector<RowObservation>& target) {
  auto same_content = [](const RowObservation& a, const RowObservation& b) {
    return a.present == b.present && (!a.present || a.hash == b.hash);
  };
  auto same_version = [](const RowObservation& a, const RowObservation& b) {
    return a.present && b.present && a.version == b.version && a.hash == b.hash;
  };
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < source.size() && same_content(target[i], source[i])) return RowVerdict::kMatch;
    if (i + 1 < source.size() && same_content(target[i], source[i + 1])) return RowVerdict::kMatch;
  }
  for (size_t i = 0; i < target.size(); ++i) {
    if (i + 1 < source.size() && same_version(source[i], source[i + 1]) &&
        !same_content(target[i], source[i])) {
      return RowVerdict::kDifferent;
    }
    if (i >= 1 && i < source.size() && same_version(target[i - 1], target[i]) &&
        !same_content(source[i], target[i])) {
      return RowVerdict::kDifferent;
    }
  }
  return RowVerdict::kChanging;
}

}  // namespace pgshift::engine::verify
