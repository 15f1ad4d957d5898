#include "engine/large_objects.h"

#include <map>
#include <set>

#include "common/strings.h"

namespace pgshift::engine {
namespace {

// Per object: what a pass compares between the two sides.
struct ObjectKey {
  int64_t pages = 0;
  std::string digest;  // pages and their numbers, owner and ACL; only without a horizon
  bool operator==(const ObjectKey&) const = default;
};

Result<std::map<std::string, ObjectKey>> ReadObjects(pg::Connection& c, bool digests) {
  const std::string sql =
      digests ? "SELECT m.oid::text, coalesce(p.n, 0), "
                "md5(coalesce(p.h, '') || '/' || pg_get_userbyid(m.lomowner) || '/' || "
                "coalesce(m.lomacl::text, '')) "
                "FROM pg_largeobject_metadata m LEFT JOIN "
                "(SELECT loid, count(*) AS n, "
                "md5(string_agg(int4send(pageno) || data, ''::bytea ORDER BY pageno)) AS h "
                "FROM pg_largeobject GROUP BY loid) p ON p.loid = m.oid"
              : "SELECT m.oid::text, coalesce(p.n, 0), '' FROM pg_largeobject_metadata m "
                "LEFT JOIN (SELECT loid, count(*) AS n FROM pg_largeobject GROUP BY loid) p "
                "ON p.loid = m.oid";
  auto r = c.Query(sql);
  if (!r.ok()) return r.status().WithContext("reading large objects");
  std::map<std::string, ObjectKey> out;
  for (int i = 0; i < r->rows(); ++i) {
    long long pages = 0;
    (void)ParseInt64(r->Get(i, 1), &pages);
    out[r->Get(i, 0)] = ObjectKey{pages, r->Get(i, 2)};
  }
  return out;
}

// The old side's snapshot xmin as a 32-bit xid (what xmin columns hold).
Result<std::string> SnapshotXmin(pg::Connection& c) {
  const std::string sql =
      c.ServerMajor() >= 13
          ? "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296)::text"
          : "SELECT (txid_snapshot_xmin(txid_current_snapshot()) % 4294967296)::text";
  return c.QueryValue(sql);
}

// Copies object `oid` whole, `from` -> `to`, in one transaction on `to`; *bytes grows by its
// data. An object gone from `from` meanwhile is unlinked on `to` (the next pass sees it again
// if it comes back).
Status CopyObject(pg::Connection& from, pg::Connection& to, const std::string& oid,
                  int block_bytes, int64_t* bytes) {
  auto meta = from.Query(
      "SELECT pg_get_userbyid(lomowner), lomacl::text FROM pg_largeobject_metadata "
      "WHERE oid = $1::oid",
      {oid});
  if (!meta.ok()) return meta.status();
  PGSHIFT_RETURN_IF_ERROR(to.Exec("BEGIN"));
  auto body = [&]() -> Status {
    PGSHIFT_RETURN_IF_ERROR(to.Query("SELECT lo_unlink(oid) FROM pg_largeobject_metadata "
                                     "WHERE oid = $1::oid",
                                     {oid})
                                .status());
    if (meta->rows() == 0) return Status::Ok();
    PGSHIFT_RETURN_IF_ERROR(to.Query("SELECT lo_create($1::oid)", {oid}).status());
    for (int64_t next = 0;;) {
      auto pages = from.Query(
          "SELECT pageno, encode(data, 'hex') FROM pg_largeobject "
          "WHERE loid = $1::oid AND pageno >= $2::int ORDER BY pageno LIMIT 256",
          {oid, std::to_string(next)});
      if (!pages.ok()) return pages.status();
      if (pages->rows() == 0) break;
      std::string numbers = "{", data = "{";
      for (int i = 0; i < pages->rows(); ++i) {
        numbers += (i ? "," : "") + pages->Get(i, 0);
        data += std::string(i ? "," : "") + "\"" + pages->Get(i, 1) + "\"";
        *bytes += static_cast<int64_t>(pages->Get(i, 1).size() / 2);
      }
      PGSHIFT_RETURN_IF_ERROR(
          to.Query("SELECT count(lo_put($1::oid, p::bigint * $2::int, decode(h, 'hex'))) "
                   "FROM unnest($3::int[], $4::text[]) AS t(p, h)",
                   {oid, std::to_string(block_bytes), numbers + "}", data + "}"})
              .status());
      long long last = 0;
      (void)ParseInt64(pages->Get(pages->rows() - 1, 0), &last);
      next = last + 1;
    }
    // The length too: a truncate that extends an object ends it with a page of no data,
    // which writing the pages cannot make.
    auto length = from.QueryValue(
        "SELECT coalesce(max(pageno::bigint * $2::int + octet_length(data)), 0) "
        "FROM pg_largeobject WHERE loid = $1::oid",
        {oid, std::to_string(block_bytes)});
    if (!length.ok()) return length.status();
    PGSHIFT_RETURN_IF_ERROR(
        to.Query("SELECT lo_truncate64(lo_open($1::oid, 131072), $2::bigint)", {oid, *length})
            .status());
    PGSHIFT_RETURN_IF_ERROR(to.Exec("ALTER LARGE OBJECT " + oid + " OWNER TO " +
                                    to.QuoteIdent(meta->Get(0, 0))));
    return to.Query("UPDATE pg_largeobject_metadata SET lomacl = $2::aclitem[] WHERE oid = $1::oid",
                    {oid, meta->IsNull(0, 1) ? pg::Param{} : pg::Param{meta->Get(0, 1)}})
        .status();
  };
  Status s = body();
  if (!s.ok()) {
    (void)to.Exec("ROLLBACK");
    return s.WithContext("large object " + oid);
  }
  return to.Exec("COMMIT");
}

}  // namespace

Result<LargeObjectPass> SyncLargeObjects(pg::Connection& from, pg::Connection& to,
                                         const std::string& since) {
  LargeObjectPass pass;
  PGSHIFT_ASSIGN_OR_RETURN(pass.horizon, SnapshotXmin(from));
  const bool full = since.empty();
  PGSHIFT_ASSIGN_OR_RETURN(auto old_side, ReadObjects(from, full));
  PGSHIFT_ASSIGN_OR_RETURN(auto new_side, ReadObjects(to, full));
  pass.objects = static_cast<int64_t>(old_side.size());
  std::set<std::string> copy;
  for (const auto& [oid, key] : old_side) {
    auto it = new_side.find(oid);
    if (it == new_side.end() || !(it->second == key)) copy.insert(oid);
  }
  if (!full) {
    auto changed = from.Query(
        "SELECT loid::text FROM pg_largeobject WHERE age(xmin) <= age($1::xid) "
        "UNION SELECT oid::text FROM pg_largeobject_metadata WHERE age(xmin) <= age($1::xid)",
        {since});
    if (!changed.ok()) return changed.status().WithContext("finding changed large objects");
    for (int i = 0; i < changed->rows(); ++i) copy.insert(changed->Get(i, 0));
  }
  PGSHIFT_ASSIGN_OR_RETURN(std::string block,
                           from.QueryValue("SELECT current_setting('block_size')::int / 4"));
  long long block_bytes = 0;
  if (!ParseInt64(block, &block_bytes) || block_bytes <= 0) {
    return Status::Internal("bad large object page size " + block);
  }
  for (const auto& oid : copy) {
    PGSHIFT_RETURN_IF_ERROR(CopyObject(from, to, oid, static_cast<int>(block_bytes), &pass.bytes));
    pass.copied++;
  }
  for (const auto& [oid, key] : new_side) {
    if (old_side.count(oid) > 0) continue;
    auto r = to.Query("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1::oid",
                      {oid});
    if (!r.ok()) return r.status().WithContext("large object " + oid);
    pass.unlinked++;
  }
  return pass;
}

Result<std::string> LargeObjectHorizonNow(pg::Connection& c) {
  return c.QueryValue(c.ServerMajor() >= 13
                          ? "SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text"
                          : "SELECT (txid_current() % 4294967296)::text");
}

Result<bool> AnyLargeObjects(pg::Connection& a, pg::Connection& b) {
  for (pg::Connection* c : {&a, &b}) {
    PGSHIFT_ASSIGN_OR_RETURN(std::string any,
                             c->QueryValue("SELECT EXISTS (SELECT 1 FROM pg_largeobject_metadata)"));
    if (any == "t") return true;
  }
  return false;
}

}  // namespace pgshift::engine
