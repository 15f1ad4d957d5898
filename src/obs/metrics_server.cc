#include "obs/metrics_server.h"

#include <httplib.h>

#include <exception>
#include <thread>

#include "common/clock.h"
#include "common/strings.h"

namespace pgshift::obs {

struct MetricsServer::Impl {
  httplib::Server http;
  std::thread thread;
  CollectFn collect;
  ReadyFn ready;
  FamiliesFn more;
};

Result<HostPort> ParseHostPort(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("metrics address '" + text +
                                   "': expected HOST:PORT (e.g. 127.0.0.1:9187, :9187, [::1]:0)");
  }
  HostPort hp;
  hp.host = text.substr(0, colon);
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  } else if (hp.host.find(':') != std::string::npos) {
    return Status::InvalidArgument("metrics address '" + text +
                                   "': write IPv6 hosts in brackets, e.g. [::1]:9187");
  }
  if (hp.host.empty()) hp.host = "0.0.0.0";
  long long port = -1;
  if (!ParseInt64(text.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return Status::InvalidArgument("metrics address '" + text + "': the port must be 0..65535");
  }
  hp.port = static_cast<int>(port);
  return hp;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port,
                                                            CollectFn collect, ReadyFn ready,
                                                            FamiliesFn more) {
  PGSHIFT_ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(host_port));
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->impl_ = std::make_unique<Impl>();
  Impl* impl = server->impl_.get();
  impl->collect = std::move(collect);
  impl->ready = std::move(ready);
  impl->more = std::move(more);

  httplib::Server& http = impl->http;
  // httplib's default also sets SO_REUSEPORT, which would let a second process bind the same
  // port and take half of the scrapes: a port in use must be an error instead.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the client's
  // delayed ACK add ~40 ms to every scrape on a kept-alive connection (measured).
  http.set_tcp_nodelay(true);
  http.set_keep_alive_max_count(1000);
  http.set_keep_alive_timeout(2);
  http.set_read_timeout(5);
  http.set_write_timeout(5);
  http.Get("/metrics", [impl](const httplib::Request&, httplib::Response& res) {
    std::vector<prometheus::MetricFamily> families =
        MigrationFamilies(impl->collect ? impl->collect() : std::vector<MigrationMetrics>{});
    if (impl->more) {
      for (auto& f : impl->more()) families.push_back(std::move(f));
    }
    res.set_content(RenderText(families), kTextContentType);
  });
  http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http.Get("/readyz", [impl](const httplib::Request&, httplib::Response& res) {
    bool ok = !impl->ready || impl->ready();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ready\n" : "not ready\n", "text/plain");
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content("internal error: " + what + "\n", "text/plain");
      });

  int port = hp.port;
  if (port == 0) {
    port = http.bind_to_any_port(hp.host);
    if (port < 0) port = 0;
  } else if (!http.bind_to_port(hp.host, port)) {
    port = 0;
  }
  if (port == 0) {
    return Status::Unavailable("cannot listen on " + host_port +
                               " (address in use, or not an address of this machine)");
  }
  server->host_ = hp.host;
  server->port_ = port;
  impl->thread = std::thread([impl]() { impl->http.listen_after_bind(); });
  // stop() is a no-op until the listen loop runs: wait for it, so destruction cannot hang.
  const int64_t deadline = MonotonicMillis() + 5000;
  while (!http.is_running() && MonotonicMillis() < deadline) SleepMillis(1);
  return server;
}

MetricsServer::~MetricsServer() {
  if (!impl_) return;
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string MetricsServer::Url() const {
  std::string h = host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_;
  return "http://" + h + ":" + std::to_string(port_) + "/metrics";
}

}  // namespace pgshift::obs
