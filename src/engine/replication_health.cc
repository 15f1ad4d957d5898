#include "engine/replication_health.h"

#include <algorithm>
#include <regex>
#include <set>

#include "common/clock.h"
#include "common/strings.h"

namespace pgshift::engine {

namespace {

// Two of the subscription's retry intervals (wal_retrieve_retry_interval, 5 s by default).
constexpr int64_t kRetryingStallMs = 10000;

// Hex digits of a bytea in hex output format ("\x4142...") back to bytes.
std::string DecodeByteaHex(const std::string& text) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  if (text.rfind("\\x", 0) != 0) return out;
  out.reserve((text.size() - 2) / 2);
  for (size_t i = 2; i + 1 < text.size(); i += 2) {
    int hi = nibble(text[i]), lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0) break;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

// The unqualified name of "schema.table" as format('%I.%I') wrote it (quotes removed), which
// is how the server's messages name a table.
std::string RelName(const std::string& qualified) {
  // Scan past the schema part, honouring quotes.
  size_t i = 0;
  bool quoted = false;
  for (; i < qualified.size(); ++i) {
    char c = qualified[i];
    if (c == '"') {
      if (quoted && i + 1 < qualified.size() && qualified[i + 1] == '"') {
        ++i;
      } else {
        quoted = !quoted;
      }
    } else if (c == '.' && !quoted) {
      break;
    }
  }
  std::string rel = i < qualified.size() ? qualified.substr(i + 1) : qualified;
  if (rel.size() >= 2 && rel.front() == '"' && rel.back() == '"') {
    std::string unq;
    for (size_t j = 1; j + 1 < rel.size(); ++j) {
      unq.push_back(rel[j]);
      if (rel[j] == '"' && j + 2 < rel.size() && rel[j + 1] == '"') ++j;
    }
    return unq;
  }
  return rel;
}

std::vector<std::string> NumberTokens(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      cur.push_back(c);
    } else if (!cur.empty()) {
      out.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

bool HasToken(const std::vector<std::string>& tokens, const std::string& t) {
  return std::find(tokens.begin(), tokens.end(), t) != tokens.end();
}

std::string Plural(int64_t n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

Result<ReplicationFacts> ReadReplicationFacts(pg::Connection& target, const std::string& sub) {
  ReplicationFacts f;
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult s,
      target.Query("SELECT oid, subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = "
                   "(SELECT oid FROM pg_database WHERE datname = current_database())",
                   {sub}));
  if (s.rows() == 0) return f;
  f.found = true;
  const std::string oid = s.Get(0, 0);
  f.enabled = s.GetBool(0, "subenabled");
  const int major = target.ServerMajor();
  if (major >= 15) {
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult st,
        target.Query("SELECT sync_error_count, apply_error_count FROM pg_stat_subscription_stats "
                     "WHERE subid = $1::oid",
                     {oid}));
    if (st.rows() > 0) {
      f.sync_errors = st.GetInt(0, "sync_error_count");
      f.apply_errors = st.GetInt(0, "apply_error_count");
    }
  }
  if (major >= 18) {
    // Read by name: each major may add conflict types.
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult c,
        target.Query("SELECT substr(e.key, 7), e.value FROM pg_stat_subscription_stats s, "
                     "jsonb_each_text(to_jsonb(s)) e WHERE s.subid = $1::oid "
                     "AND e.key LIKE 'confl\\_%' ORDER BY 1",
                     {oid}));
    for (int i = 0; i < c.rows(); ++i) {
      long long n = 0;
      if (ParseInt64(c.Get(i, 1), &n)) f.conflicts[c.Get(i, 0)] = n;
    }
  }
  // Parallel apply workers (16+) have no table either; only the leader counts as "the" apply
  // worker.
  std::string workers =
      "SELECT CASE WHEN c.oid IS NULL THEN '' ELSE format('%I.%I', n.nspname, c.relname) END, "
      "w.pid "
      "FROM pg_stat_subscription w LEFT JOIN pg_class c ON c.oid = w.relid "
      "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE w.subid = $1::oid AND w.pid IS NOT NULL";
  if (major >= 16) workers += " AND w.leader_pid IS NULL";
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult w, target.Query(workers, {oid}));
  for (int i = 0; i < w.rows(); ++i) {
    int pid = static_cast<int>(std::stol(w.Get(i, 1)));
    if (w.Get(i, 0).empty()) {
      f.apply_pid = pid;
    } else {
      f.sync_pids[w.Get(i, 0)] = pid;
    }
  }
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult t,
      target.Query("SELECT format('%I.%I', n.nspname, c.relname), sr.srsubstate::text "
                   "FROM pg_subscription_rel sr JOIN pg_class c ON c.oid = sr.srrelid "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE sr.srsubid = $1::oid "
                   "ORDER BY 1",
                   {oid}));
  for (int i = 0; i < t.rows(); ++i) {
    const std::string name = t.Get(i, 0), state = t.Get(i, 1);
    if (state != "r" && state != "s") f.not_ready.push_back(name);
    if (state == "d" && !f.sync_pids.count(name)) f.retrying.push_back(name);
  }
  return f;
}

Result<std::string> ReadServerLogTail(pg::Connection& c, int64_t bytes) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult s,
      c.Query("SELECT current_setting('logging_collector'), current_setting('log_destination'), "
              "current_setting('log_directory')"));
  const std::string collector = s.Get(0, 0), destination = s.Get(0, 1), directory = s.Get(0, 2);
  const std::string where = "the target's server log (log_destination = " + destination +
                            ", logging_collector = " + collector +
                            (collector == "on" ? ", log_directory = " + directory : "") +
                            "): look for lines with \"logical replication\"";
  if (destination.find("stderr") == std::string::npos) {
    return Status::FailedPrecondition("the server logs to " + destination +
                                      " only, which pgshift does not read; see " + where);
  }
  std::string path;
  if (collector == "on") {
    auto p = c.QueryValue("SELECT coalesce(pg_current_logfile('stderr'), '')");
    if (!p.ok() || p->empty()) {
      return Status::FailedPrecondition(
          "pgshift's role may not ask for the current log file (pg_current_logfile needs "
          "pg_monitor or superuser); see " + where);
    }
    path = *p;
  } else {
    // No collector: the server writes its log to its own stderr. When that is a regular file
    // (pg_ctl -l FILE), every backend holds it as fd 2. A pipe or socket reports size 0 and
    // is never read (reading one would steal or wait for another reader's data).
    path = "/proc/self/fd/2";
  }
  auto size = c.QueryValue("SELECT size FROM pg_stat_file($1, true) WHERE NOT isdir", {path});
  if (!size.ok() && c.last_sqlstate() == "42501") {
    return Status::FailedPrecondition(
        "pgshift's role may not read server files (superuser or pg_read_server_files needed); "
        "see " + where);
  }
  long long n = 0;
  if (!size.ok() || !ParseInt64(*size, &n) || n <= 0) {
    return Status::FailedPrecondition("the server's log is not a file pgshift can read; see " +
                                      where);
  }
  const long long take = std::min<long long>(n, bytes);
  auto data = c.QueryValue("SELECT pg_read_binary_file($1, $2::bigint, $3::bigint)",
                           {path, std::to_string(n - take), std::to_string(take)});
  if (!data.ok()) {
    return Status::FailedPrecondition("reading the server log failed (" + data.status().message() +
                                      "); see " + where);
  }
  std::string text = DecodeByteaHex(*data);
  // The first line is most likely cut.
  if (take < n) {
    auto nl = text.find('\n');
    text = nl == std::string::npos ? "" : text.substr(nl + 1);
  }
  return text;
}

std::vector<WorkerLogError> FindWorkerErrors(const std::string& log, const std::string& sub,
                                             const std::vector<std::string>& tables) {
  static const std::regex kTag(R"((ERROR|FATAL|PANIC|DETAIL|HINT|CONTEXT|LOG|WARNING|STATEMENT|NOTICE|INFO):  )");
  static const std::regex kSync(
      R"re(logical replication table synchronization worker for subscription "(.*)", table "(.*)" has started)re");
  static const std::regex kApply(R"re(logical replication apply worker for subscription "(.*)" has started)re");
  static const std::regex kExited(
      R"(background worker "logical replication [a-z ]*worker" \(PID (\d+)\) exited with exit code 1)");
  struct Started {
    std::vector<std::string> tokens;
    std::string table;
  };
  struct Group {
    std::string prefix;
    std::vector<std::string> tokens;
    std::string text;
  };
  std::vector<Started> started;
  std::vector<Group> groups;
  std::vector<std::pair<std::string, std::string>> by_pid;  // (table, text), in log order
  Group* open = nullptr;
  std::set<std::string> prefix_tokens;  // every number seen in a line prefix
  bool has_pids = false;                 // an exited worker's PID was in some prefix
  for (const auto& line : Split(log, '\n')) {
    std::smatch tag;
    if (!std::regex_search(line, tag, kTag)) {
      open = nullptr;
      continue;
    }
    const std::string prefix = line.substr(0, static_cast<size_t>(tag.position(0)));
    const std::string kind = tag[1].str();
    const std::string message = line.substr(static_cast<size_t>(tag.position(0)));
    if (kind == "DETAIL" || kind == "HINT" || kind == "CONTEXT") {
      if (open != nullptr && open->prefix == prefix) open->text += "\n" + message;
      continue;
    }
    open = nullptr;
    std::smatch m;
    if (std::regex_search(message, m, kExited) && prefix_tokens.count(m[1].str())) {
      has_pids = true;
    }
    for (auto& t : NumberTokens(prefix)) prefix_tokens.insert(std::move(t));
    if (kind == "ERROR" || kind == "FATAL" || kind == "PANIC") {
      groups.push_back({prefix, NumberTokens(prefix), message});
      open = &groups.back();
    } else if (std::regex_search(message, m, kSync) && m[1].str() == sub) {
      started.push_back({NumberTokens(prefix), m[2].str()});
    } else if (std::regex_search(message, m, kApply) && m[1].str() == sub) {
      started.push_back({NumberTokens(prefix), ""});
    } else if (std::regex_search(message, m, kExited)) {
      const std::string pid = m[1].str();
      const Started* who = nullptr;
      for (auto it = started.rbegin(); it != started.rend(); ++it) {
        if (HasToken(it->tokens, pid)) {
          who = &*it;
          break;
        }
      }
      if (who == nullptr) continue;  // another subscription's worker, or no %p in the prefix
      for (auto it = groups.rbegin(); it != groups.rend(); ++it) {
        if (HasToken(it->tokens, pid)) {
          by_pid.emplace_back(who->table, it->text);
          break;
        }
      }
    }
  }
  if (!has_pids) {
    // No PID to tell workers apart: errors whose context names a table of the subscription.
    for (const auto& g : groups) {
      for (const auto& t : tables) {
        if (g.text.find("COPY " + t + ",") != std::string::npos ||
            g.text.find("relation \"" + t + "\"") != std::string::npos) {
          by_pid.emplace_back(t, g.text);
          break;
        }
      }
      if (g.text.find("replication target relation") != std::string::npos) {
        by_pid.emplace_back("", g.text);
      }
    }
  }
  // The latest error per worker (table), in the order of their last appearance.
  std::vector<WorkerLogError> out;
  std::set<std::string> seen;
  for (auto it = by_pid.rbegin(); it != by_pid.rend(); ++it) {
    if (seen.insert(it->first).second) out.push_back({it->first, it->second});
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::string DescribeConflicts(const std::map<std::string, int64_t>& conflicts) {
  std::vector<std::string> parts;
  for (const auto& [type, n] : conflicts) {
    if (n > 0) parts.push_back(type + " " + std::to_string(n));
  }
  return Join(parts, ", ");
}

Status ReplicationWatch::Observe(pg::Connection& target, const std::string& database,
                                 const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(ReplicationFacts f, ReadReplicationFacts(target, sub));
  if (!f.found) return Status::Ok();
  if (!f.enabled) {
    return Status::FailedPrecondition(
        "subscription " + sub + " on the target (database " + database +
        ") is disabled, so nothing replicates: after fixing what disabled it, run ALTER "
        "SUBSCRIPTION " + target.QuoteIdent(sub) + " ENABLE on the target, then resume");
  }
  if (const std::string conflicts = DescribeConflicts(f.conflicts); !conflicts.empty()) {
    auto counted = [&f](const char* type) -> int64_t {
      auto c = f.conflicts.find(type);
      return c == f.conflicts.end() ? 0 : c->second;
    };
    // Those two are skipped silently; the others stop the apply worker (an apply error too).
    const bool skipped = counted("update_missing") + counted("delete_missing") > 0;
    std::string msg = "replication into database " + database +
                      " met conflicts: the target's apply worker found rows that differ from "
                      "the source (pg_stat_subscription_stats of " + sub + ": " + conflicts +
                      "). " +
                      (skipped ? "Changes to rows missing on the target were skipped, so the "
                                 "target no longer holds what the source holds"
                               : "The apply worker stops on such a row and tries again for ever") +
                      "; cutover is blocked";
    auto log = ReadServerLogTail(target);
    if (log.ok()) {
      std::string said;
      for (const auto& line : Split(*log, '\n')) {
        if (line.find("conflict detected on relation") != std::string::npos) said = line;
      }
      if (!said.empty()) msg += "\nthe target's last conflict: " + said;
    }
    msg += "\nfind the rows with `pgshift verify`; repair them on the target, then clear the "
           "counters (SELECT pg_stat_reset_subscription_stats(oid) FROM pg_subscription WHERE "
           "subname = " + target.QuoteLiteral(sub) + ") and resume; or abort and start again";
    return Status::FailedPrecondition(RedactSecrets(msg));
  }
  const int64_t now = MonotonicMillis();
  auto [it, first] = seen_.try_emplace(sub);
  Seen& s = it->second;
  auto age_out = [&](std::deque<int64_t>& times) {
    while (!times.empty() && times.front() < now - window_ms_) times.pop_front();
  };
  s.counters.push_back({now, f.sync_errors, f.apply_errors});
  while (s.counters.size() > 1 && s.counters.front().at_ms < now - window_ms_) {
    s.counters.pop_front();
  }
  if (first) {
    s.sync_pid = f.sync_pids;
    s.apply_pid = f.apply_pid;
    return Status::Ok();
  }
  // Restarts, the only signal before 15: a new worker pid where another one ran before.
  for (const auto& [table, pid] : f.sync_pids) {
    auto p = s.sync_pid.find(table);
    if (p != s.sync_pid.end() && p->second != pid) s.sync_restarts[table].push_back(now);
    s.sync_pid[table] = pid;
  }
  if (f.apply_pid != 0) {
    if (s.apply_pid != 0 && s.apply_pid != f.apply_pid) s.apply_restarts.push_back(now);
    s.apply_pid = f.apply_pid;
  }
  for (auto& [table, times] : s.sync_restarts) age_out(times);
  age_out(s.apply_restarts);
  // Since when each table has been seen waiting for a retry (until it is copied).
  for (const auto& table : f.retrying) s.retrying_since.try_emplace(table, now);
  std::erase_if(s.retrying_since, [&f](const auto& kv) {
    return std::find(f.not_ready.begin(), f.not_ready.end(), kv.first) == f.not_ready.end();
  });
  // Since when the enabled subscription has had no apply worker (0: it has one).
  s.apply_missing_since = f.apply_pid != 0 ? 0 : (s.apply_missing_since ? s.apply_missing_since : now);

  const Counters& oldest = s.counters.front();
  const Counters& latest = s.counters.back();
  int64_t sync_failures = 0;
  std::vector<std::string> stalled;
  std::string counted_by;
  if (latest.sync && oldest.sync) {
    sync_failures = *latest.sync - *oldest.sync;
    counted_by = "pg_stat_subscription_stats.sync_error_count";
    if (sync_failures >= failures_for_stall_) stalled = f.retrying;
  } else {
    // Before 15 no counter: restarts seen, or a failed copy still waiting for its retry after
    // two retry intervals (a copy that works always has its worker).
    counted_by = "table sync worker restarts, or a copy waiting for its retry over " +
                 std::to_string(kRetryingStallMs / 1000) + " s (no error counter before 15)";
    for (const auto& table : f.not_ready) {
      auto r = s.sync_restarts.find(table);
      const int64_t n = r == s.sync_restarts.end() ? 0 : static_cast<int64_t>(r->second.size());
      auto w = s.retrying_since.find(table);
      const bool waited = w != s.retrying_since.end() && now - w->second >= kRetryingStallMs &&
                          std::find(f.retrying.begin(), f.retrying.end(), table) != f.retrying.end();
      if (n >= failures_for_stall_ || waited) {
        stalled.push_back(table);
        sync_failures = std::max<int64_t>(sync_failures, std::max<int64_t>(n, 1));
      }
    }
  }
  int64_t apply_failures = latest.apply && oldest.apply
                               ? *latest.apply - *oldest.apply
                               : static_cast<int64_t>(s.apply_restarts.size());
  if (!latest.apply && s.apply_missing_since != 0 &&
      now - s.apply_missing_since >= kRetryingStallMs) {
    apply_failures = std::max<int64_t>(apply_failures, failures_for_stall_);
  }
  const bool apply_stalled = apply_failures >= failures_for_stall_;
  if (stalled.empty() && !apply_stalled) return Status::Ok();

  std::vector<std::string> relnames;
  for (const auto& t : f.not_ready) relnames.push_back(RelName(t));
  auto log = ReadServerLogTail(target);
  std::vector<WorkerLogError> errors;
  if (log.ok()) errors = FindWorkerErrors(*log, sub, relnames);
  auto said = [&errors](const std::string& relname) -> std::string {
    for (auto e = errors.rbegin(); e != errors.rend(); ++e) {
      if (e->table == relname) return e->text;
    }
    return "";
  };
  auto indent = [](const std::string& text) {
    std::string out;
    for (const auto& l : Split(text, '\n')) out += "\n    " + l;
    return out;
  };
  std::string msg = "replication into database " + database + " is stalled: ";
  std::vector<std::string> parts;
  for (const auto& table : stalled) {
    std::string part = "the initial copy of table " + table + " keeps failing";
    std::string text = said(RelName(table));
    part += text.empty() ? "" : "; the target says:" + indent(text);
    parts.push_back(part);
  }
  if (apply_stalled) {
    std::string text = said("");
    parts.push_back("the apply worker of subscription " + sub + " failed " +
                    Plural(apply_failures, "time", "times") +
                    (text.empty() ? "" : "; the target says:" + indent(text)));
  }
  msg += Join(parts, "\n  ");
  if (!stalled.empty()) {
    msg += "\n(" + Plural(sync_failures, "failed attempt", "failed attempts") + " in " +
           std::to_string(window_ms_ / 1000) + " s by " + counted_by +
           "; the subscription retries every few seconds, for ever)";
  }
  if (!log.ok()) {
    msg += "\nthe server's own message: " + log.status().message();
  }
  msg += "\nfix what the target refuses (the rows on the source, or the object on the target); "
         "the subscription's next attempt then goes through: resume the migration, or abort it";
  return Status::FailedPrecondition(RedactSecrets(msg));
}

Result<WorkerTrouble> DescribeWorkerTrouble(pg::Connection& target, const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(ReplicationFacts f, ReadReplicationFacts(target, sub));
  WorkerTrouble t;
  t.enabled = !f.found || f.enabled;
  t.sync_errors = f.sync_errors;
  t.apply_errors = f.apply_errors;
  for (const auto& [type, n] : f.conflicts) {
    if (n > 0) t.conflicts[type] = n;
  }
  t.retrying = f.retrying;
  const bool trouble = !f.retrying.empty() || f.sync_errors.value_or(0) > 0 ||
                       f.apply_errors.value_or(0) > 0 || !t.conflicts.empty() || !t.enabled;
  if (!trouble) return t;
  auto log = ReadServerLogTail(target);
  if (!log.ok()) {
    t.log_note = log.status().message();
    return t;
  }
  std::vector<std::string> relnames;
  for (const auto& n : f.not_ready) relnames.push_back(RelName(n));
  t.log_errors = FindWorkerErrors(*log, sub, relnames);
  return t;
}

}  // namespace pgshift::engine
