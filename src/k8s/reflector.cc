#include "k8s/reflector.h"

#include "k8s/api_error.h"
#include "k8s/logging.h"

namespace pgshift::k8s {

Reflector::Reflector(Client* client, Options options, Handlers handlers)
    : client_(client), options_(std::move(options)), handlers_(std::move(handlers)) {
  resource_version_ = options_.resume_from;
}

Reflector::~Reflector() { Stop(); }

void Reflector::Start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Reflector::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::string Reflector::last_resource_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resource_version_;
}

Reflector::Stats Reflector::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Reflector::SleepFor(Duration d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!stop_ && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::min<Duration>(Duration(50), d));
  }
}

bool Reflector::ListAndReplace(Backoff& backoff) {
  ListOptions lo;
  lo.label_selector = options_.label_selector;
  lo.field_selector = options_.field_selector;
  Result<ObjectList> list = client_->List(options_.resource, options_.ns, lo);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.lists;
  }
  if (!list.ok()) {
    Log(LogLevel::kWarning, "reflector: " + list.status().ToString());
    SleepFor(backoff.Next());
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    resource_version_ = list->resource_version;
  }
  if (handlers_.on_replace) handlers_.on_replace(std::move(list->items), list->resource_version);
  return true;
}

void Reflector::Run() {
  Backoff backoff(options_.backoff_initial, options_.backoff_max);
  const std::string what = options_.resource.Path(options_.ns);
  while (!stop_) {
    if (last_resource_version().empty()) {
      if (!ListAndReplace(backoff)) continue;
    }
    WatchOptions wo;
    wo.resource_version = last_resource_version();
    wo.allow_bookmarks = true;
    wo.timeout = options_.watch_timeout;
    wo.label_selector = options_.label_selector;
    wo.field_selector = options_.field_selector;
    bool expired = false;
    Status event_error;
    auto on_event = [&](const WatchEvent& ev) {
      if (ev.type == "ERROR") {
        int code = ev.object.value("code", 0);
        if (code == 410) {
          expired = true;
        } else {
          event_error = Status::Unavailable("watch " + what + ": ERROR event: " +
                                            ev.object.value("message", ev.object.dump()));
        }
        return false;
      }
      backoff.Reset();
      std::string rv = ResourceVersionOf(ev.object);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!rv.empty()) resource_version_ = rv;
        if (ev.type == "BOOKMARK") {
          ++stats_.bookmarks;
        } else {
          ++stats_.events;
        }
      }
      if (ev.type != "BOOKMARK" && handlers_.on_event) handlers_.on_event(ev);
      return !stop_;
    };
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.watches;
    }
    Status s = client_->WatchOnce(options_.resource, options_.ns, wo, on_event, &stop_);
    if (stop_) break;
    if (s.ok() && event_error.ok() && !expired) continue;  // the server's timeout: go on
    if (expired || IsGone(s)) {
      Log(LogLevel::kInfo, "watch " + what + ": resourceVersion " + wo.resource_version +
                               " expired (410); listing again");
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.expired;
      resource_version_.clear();
      continue;
    }
    Status err = s.ok() ? event_error : s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.reconnects;
    }
    Duration delay = backoff.Next();
    Log(LogLevel::kInfo, "watch " + what + " ended: " + err.ToString() + "; reconnecting in " +
                             std::to_string(delay.count()) + " ms");
    SleepFor(delay);
  }
}

}  // namespace pgshift::k8s
