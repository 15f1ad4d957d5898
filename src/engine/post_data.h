// Applying pg_dump's post-data section (indexes, constraints, triggers, rules, policies, ...)
// after a bulk copy, with several sessions at once, resumably, and overlapping the copy.
//
// The script is split into statements (quotes, dollar quotes, comments and parentheses
// respected) and run in four waves:
//   1. index builds: CREATE INDEX and ADD CONSTRAINT ... PRIMARY KEY / UNIQUE / EXCLUDE. Those
//      of a table start as soon as the caller says its rows are all there (TableReady), while
//      other tables still copy; biggest tables first;
//   2. ALTER INDEX ... ATTACH PARTITION, in order (a partitioned index is valid, and so can
//      back a foreign key, only once every partition's index is attached);
//   3. ADD CONSTRAINT ... FOREIGN KEY, in parallel (each validates by a scan; a deadlock
//      between two of them is retried);
//   4. everything else, in the script's order, in one transaction.
// Waves 2-4 start once every index is built (Finish). Every session runs with a generous
// maintenance_work_mem and the script's SET lines in force where each statement stood. Each
// statement commits together with a row naming it in the ledger table (index builds on small
// tables several to a transaction, wave 4 all in one), so an apply interrupted by a crash and
// run again with the same script does only what is left. Sessions commit without waiting for
// the WAL flush; Finish ends with a commit that waits, so all it reports done is durable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

struct PostDataStatement {
  enum class Wave { kIndex = 1, kAttach = 2, kForeignKey = 3, kOther = 4 };
  Wave wave = Wave::kOther;
  std::string sql;       // the statement, without its ';'
  std::string settings;  // "SET ...; " statements in force where it stood, in order
  std::string table;     // waves 1 and 3: the table it works on, as written (for ordering)
  std::string key;       // stable name in the ledger: ordinal and a hash of the text
};

// Splits a pg_dump script into its statements. SET and set_config lines are not statements of
// their own: they become the `settings` of those that follow. Pure, for tests.
std::vector<PostDataStatement> SplitPostData(const std::string& script);

struct PostDataOptions {
  int jobs = 2;
  std::string maintenance_work_mem = "512MB";
  std::string ledger_table;  // schema-qualified, quoted; created when missing
};

// Builds a post-data script on the target database `target_db_dsn` (see above). Thread-safe.
class PostDataBuilder {
 public:
  static Result<std::unique_ptr<PostDataBuilder>> Start(const std::string& script,
                                                        const std::string& target_db_dsn,
                                                        const PostDataOptions& options);
  ~PostDataBuilder();
  PostDataBuilder(const PostDataBuilder&) = delete;
  PostDataBuilder& operator=(const PostDataBuilder&) = delete;

  // Every row of `table` ("schema"."name", quoted as pg_dump --quote-all-identifiers does) is
  // on the target: its indexes may be built. `bytes` orders the builds, biggest first.
  void TableReady(const std::string& table, int64_t bytes);
  // Every table is ready: builds the remaining indexes, then waves 2-4. Returns the first error.
  Status Finish();
  int total() const { return total_; }  // statements left when it started
  int done() const { return done_count_.load(); }
  // Of total(): constraints NOT VALID on the source, made NOT VALID after the rows are in.
  int not_valid() const { return not_valid_; }

 private:
  struct Item {
    const PostDataStatement* st;
    int64_t bytes;
  };
  PostDataBuilder(std::string dsn, PostDataOptions options)
      : dsn_(std::move(dsn)), options_(std::move(options)) {}
  Result<std::unique_ptr<pg::Connection>> Session() const;
  Status Commit(pg::Connection& c, const std::vector<const PostDataStatement*>& batch,
                const std::string& extra_key = "");
  Status RunWave(const std::vector<const PostDataStatement*>& todo, int jobs);
  void IndexWorker();
  void Enqueue(const std::string& table, int64_t bytes);  // REQUIRES: mu_ held

  const std::string dsn_;
  const PostDataOptions options_;
  std::vector<PostDataStatement> all_;
  std::vector<const PostDataStatement*> later_[3];  // waves 2, 3, 4 not yet done
  int total_ = 0;
  int not_valid_ = 0;
  std::atomic<int> done_count_{0};
  std::vector<std::thread> workers_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<const PostDataStatement*>> waiting_;  // wave 1, by table
  std::vector<Item> queue_;  // ready wave-1 statements, biggest table last (popped first)
  bool finishing_ = false;
  Status first_error_;
};

// Start, then Finish at once: for a script applied after every row is there.
Status ApplyPostData(const std::string& script, const std::string& target_db_dsn,
                     const PostDataOptions& options);

}  // namespace pgshift::engine
