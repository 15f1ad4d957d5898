// verify_plan: the pure parts of verification, no connection needed. How a row is hashed, the
// SQL text of every query verification runs (one builder for both sides, so both hash the same
// columns the same way), key ranges and their typed predicates, splitting a range, and how the
// observations of one row over time are classified ("the same", "still being written", "really
// different"). verify.cc runs these queries; verify_plan_test.cc tests them without servers.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine::verify {

// How a row becomes a 64-bit hash.
//   kTyped:  each column hashed by the server's own extended hash function of its type where
//            equal values of the type always have equal text (integers, deterministic text,
//            char(n), uuid, timestamps, time), by hashtextextended of its text form otherwise;
//            the columns' hashes are XORed, each seeded by its position. No row is turned into
//            text, which is where the md5 path spends its time. Needs the same encoding on both
//            servers (text is hashed as stored bytes) and the same hash results (checked by a
//            probe: the functions are stable across majors, as hash partitioning relies on,
//            but depend on the machine's byte order).
//   kMd5:    the first 64 bits of md5 of the row's text form in UTF-8: for servers whose
//            encodings differ.
//   kSha256: the same with sha256, for servers where md5() is refused (FIPS mode).
enum class HashMethod { kTyped, kMd5, kSha256 };
std::string HashMethodName(HashMethod m);  // "hashextended" | "md5" | "sha256"
Result<HashMethod> ParseHashMethod(const std::string& name);

// One side's answers to kHashProbeSql.
struct HashProbe {
  std::string encoding;             // server_encoding
  std::optional<std::string> hash;  // hashtextextended of a fixed text; nullopt: it failed
  bool md5 = false;                 // md5() answered (FIPS servers refuse it)
};
// server_encoding and the hash of a fixed text; then, separately (it fails on FIPS servers),
// md5 of one.
inline constexpr char kHashProbeSql[] =
    "SELECT current_setting('server_encoding'), hashtextextended('pgshift probe', 7)::text";
inline constexpr char kMd5ProbeSql[] = "SELECT md5('pgshift')";
HashMethod ChooseHashMethod(const HashProbe& source, const HashProbe& target);

struct Column {
  std::string name;
  std::string type_schema, type_name;  // pg_type of the column: typed casts of key values
  // The pg_catalog type the value is stored as (the column's, or its domain's base type):
  // "int4", "text", ...; empty for anything else. Chooses the hash function.
  std::string builtin;
  int typmod = -1;
  bool numeric = false;       // type category N: shown unquoted in a key's text
  bool deterministic = true;  // its collation compares bytes (or it has none)
};

struct TableShape {
  std::vector<Column> columns;  // attnum order
  std::vector<size_t> key;      // indexes into columns, in the key's order; empty: no key
  std::string key_source;       // "primary key" | "replica identity index" | ""
  bool keyed() const { return !key.empty(); }
};

// A key's values, one text per key column (the server's output form under verification's
// pinned settings, which its input function reads back).
using KeyValues = std::vector<std::string>;

// Keys from lo (inclusive) to hi (exclusive), in the key's btree order; nullopt: unbounded.
struct KeyRange {
  std::optional<KeyValues> lo, hi;
  bool operator==(const KeyRange& o) const { return lo == o.lo && hi == o.hi; }
};

// Cuts `r` at `points` (keys inside r, in key order): points.size() + 1 ranges that together
// cover exactly r.
std::vector<KeyRange> SplitRange(const KeyRange& r, const std::vector<KeyValues>& points);
// Every about sorted_sample.size()/parts-th element of a sorted sample: at most parts - 1 cut
// points (fewer when the sample is small), strictly increasing positions.
std::vector<KeyValues> PickCutPoints(const std::vector<KeyValues>& sorted_sample, int64_t parts);

// "(42)", "(7,'a')": the key as people read it (numbers bare, other values quoted as
// quote_literal does).
std::string KeyText(const TableShape& shape, const KeyValues& key);
// Orders "(9)" before "(10)": runs of digits compare as numbers.
bool NaturalLess(const std::string& a, const std::string& b);

using Quoter = std::function<std::string(std::string_view)>;

// A query and its parameters (text, or NULL).
struct Sql {
  std::string text;
  std::vector<pg::Param> params;
};

// Every query verification runs on one table. Built from the source's shape for both sides,
// so both hash the same columns in the same order (columns are matched by name: a target
// whose columns were created in another order hashes the same). Key predicates compare the
// key columns with parameters cast to the key's own types, so the key's btree index serves
// them; no query filters on a hash of the key.
class TableQueries {
 public:
  // `quote` quotes identifiers; `hashes` false: only presence counts (level count).
  TableQueries(const std::string& schema, const std::string& table, const TableShape& shape,
               HashMethod method, bool hashes, const Quoter& quote);

  // One row: count(*), sum of row hashes (numeric text; "0" for no rows).
  Sql Aggregate(const KeyRange& r) const;
  // Key columns, xmin (the row version), row hash of every row of the range.
  Sql RangeRows(const KeyRange& r) const;
  // The same for the given keys (looked up by equality, as the key's index does).
  Sql RowsByKey(const std::vector<KeyValues>& keys) const;
  // Every `step`-th key of the range in key order (the first at position step).
  Sql CutPoints(const KeyRange& r, int64_t step) const;
  // Keys of a page sample of about `percent` % of the table, in key order.
  Sql SampleKeys(double percent) const;
  // Tables without a key (a multiset of rows): per bucket of the row hash (`buckets` a power
  // of two), count and sum; the hashes and their multiplicity in some buckets; one row's text
  // per hash.
  Sql HashBuckets(int64_t buckets) const;
  Sql HashesInBuckets(int64_t buckets, const std::vector<int64_t>& which) const;
  Sql RowTexts(const std::vector<std::string>& hashes, int limit) const;

  const std::string& row_hash() const { return row_hash_; }

 private:
  // " WHERE ..." (or "") for r, its parameters appended to *params.
  std::string Where(const KeyRange& r, std::vector<pg::Param>* params) const;
  std::string KeyList() const;                                  // "t.k1, t.k2"
  std::string KeyTuple() const;                                 // "t.k1" or "(t.k1, t.k2)"
  std::string KeyCasts(size_t first_param, bool arrays) const;  // "$1::T" or "($1::T1, $2::T2)"

  const TableShape& shape_;
  std::string from_;
  std::vector<std::string> key_cols_;   // quoted "t.k"
  std::vector<std::string> key_types_;  // quoted "schema.type"
  std::string row_hash_, row_text_;
};

// The order-independent sum of row hashes across chunks: numeric text from the servers,
// added exactly (64-bit hashes times at most 2^63 rows fit in 128 bits).
class HashSum {
 public:
  __extension__ typedef __int128 Int128;  // GCC and Clang have it; -Wpedantic needs the word
  __extension__ typedef unsigned __int128 UInt128;

  // False when `numeric` is not an integer of at most 38 digits.
  bool Add(const std::string& numeric);
  std::string ToString() const;
  bool operator==(const HashSum& o) const { return v_ == o.v_; }

 private:
  Int128 v_ = 0;
};

// One read of one row on one side: absent, or present with its version (xmin) and hash.
struct RowObservation {
  bool present = false;
  std::string version, hash;
};
enum class RowVerdict { kMatch, kChanging, kDifferent };

// Classifies a row seen over time while replication runs. The reads alternate
// source[0], target[0], source[1], target[1], ... and before each target[i] a settle made the
// target apply everything the source committed before it (so target[i] shows the source's row
// as of some moment after source[i] was read and before target[i]); source has one read more
// than target, or as many.
//  - kMatch: the contents agreed at some point (target[i] equals source[i] or source[i + 1]).
//  - kDifferent: provably not replication in flight. Either the source's row kept one version
//    from source[i] to source[i + 1] and target[i], read in between, shows something else; or
//    the target's row kept one version from target[i - 1] to target[i] (nothing was applied to
//    it) and source[i], read in between, shows something else.
//  - kChanging: neither: the row is being written; the exact comparison at the switch point
//    settles it.
RowVerdict ClassifyRow(const std::vector<RowObservation>& source,
                       const std::vector<RowObservation>& target);

}  // namespace pgshift::engine::verify
