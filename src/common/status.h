// Error values for every pgshift layer: no exceptions cross a module boundary.
//
//   Status s = conn->Exec("...");
//   if (!s.ok()) return s.WithContext("creating publication");
//   Result<int> r = ParsePort(text);
//   if (!r.ok()) return r.status();
//   int port = *r;
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace pgshift {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // the caller's input is wrong; retrying will not help
  kNotFound,            // a named thing does not exist
  kAlreadyExists,       // a thing to create is already there
  kFailedPrecondition,  // the system is not in a state where this can run
  kUnavailable,         // transient: a connection failed, retry may succeed
  kAborted,             // stopped on purpose (cancelled, a budget ran out)
  kDeadlineExceeded,    // a wait ran out of time
  kInternal,            // a bug or an unexpected answer
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status FailedPrecondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) {
    return {StatusCode::kDeadlineExceeded, std::move(m)};
  }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prepends "context: " to the message; the code stays.
  Status WithContext(std::string_view context) const;
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T&& operator*() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace pgshift

// Returns early with the status of `expr` when it is not ok.
#define PGSHIFT_RETURN_IF_ERROR(expr)          \
  do {                                         \
    ::pgshift::Status _st = (expr);            \
    if (!_st.ok()) return _st;                 \
  } while (0)

#define PGSHIFT_CONCAT_INNER(a, b) a##b
#define PGSHIFT_CONCAT(a, b) PGSHIFT_CONCAT_INNER(a, b)
// `PGSHIFT_ASSIGN_OR_RETURN(auto x, MakeX());`
#define PGSHIFT_ASSIGN_OR_RETURN(lhs, expr) \
  PGSHIFT_ASSIGN_OR_RETURN_IMPL(PGSHIFT_CONCAT(_res_, __LINE__), lhs, expr)
#define PGSHIFT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
