#include "engine/statistics.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "engine/server_ops.h"

namespace pgshift::engine {

const char* const kAnalyzeTablesSql =
    "SELECT format('%I.%I', n.nspname, c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition "
    "  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pgshift') "
    "  AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' "
    "  AND c.relpersistence <> 't' ";

const char* const kWithoutStatisticsSql =
    "  AND (c.reltuples < 0 "
    "       OR NOT EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid) "
    "       OR EXISTS (SELECT 1 FROM pg_statistic_ext x WHERE x.stxrelid = c.oid)) ";

namespace {
constexpr const char* kLargestFirst = "ORDER BY pg_total_relation_size(c.oid) DESC, 1";
}  // namespace

Result<AnalyzeReport> AnalyzeDatabase(const std::string& dsn, const std::string& db, int jobs,
                                      const std::function<bool()>& stop, bool only_missing) {
  const int64_t start = MonotonicMicros();
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr first, Connect(dsn, db, "target"));
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult list,
      first->Query(std::string(kAnalyzeTablesSql) + (only_missing ? kWithoutStatisticsSql : "") +
                   kLargestFirst));
  std::vector<std::string> tables;
  for (int i = 0; i < list.rows(); ++i) tables.push_back(list.Get(i, 0));
  AnalyzeReport rep;
  rep.jobs = std::max(1, std::min(jobs, static_cast<int>(tables.size())));
  if (tables.empty()) return rep;

  std::vector<ConnPtr> sessions;
  sessions.push_back(std::move(first));
  for (int j = 1; j < rep.jobs; ++j) {
    auto c = Connect(dsn, db, "target");
    if (!c.ok()) break;  // fewer sessions, same work
    sessions.push_back(std::move(*c));
  }
  rep.jobs = static_cast<int>(sessions.size());

  std::atomic<size_t> next{0};
  std::atomic<int> done{0};
  std::atomic<bool> stopped{false};
  std::mutex mu;
  Status broken;  // a session that failed otherwise than on one table
  auto work = [&](pg::Connection* c) {
    while (true) {
      if (stop && stop()) {
        stopped = true;
        return;
      }
      const size_t i = next++;
      if (i >= tables.size()) return;
      // The names come from the catalog, quoted by format('%I.%I').
      Status s = c->Exec("ANALYZE " + tables[i]);
      if (s.ok()) {
        ++done;
        continue;
      }
      std::lock_guard<std::mutex> lock(mu);
      if (!c->Healthy()) {
        if (broken.ok()) broken = s.WithContext("target " + db + ": ANALYZE " + tables[i]);
        return;
      }
      rep.skipped.push_back(tables[i] + ": " + s.message());
    }
  };
  std::vector<std::thread> threads;
  for (size_t j = 1; j < sessions.size(); ++j) threads.emplace_back(work, sessions[j].get());
  work(sessions[0].get());
  for (auto& t : threads) t.join();
  if (stopped) return Status::Aborted("stopped while analyzing the target's tables");
  if (!broken.ok()) return broken;
  rep.tables = done;
  rep.elapsed_ms = (MonotonicMicros() - start) / 1000.0;
  return rep;
}

}  // namespace pgshift::engine
