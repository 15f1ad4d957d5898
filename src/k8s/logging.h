// Log lines of the k8s layer go through one replaceable sink, so that this library does not
// depend on the application's logging. Every line is passed through Redact() first: no
// bearer token or key material ever reaches a sink.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace pgshift::k8s {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

using LogSink = std::function<void(LogLevel, std::string_view)>;

// Replaces the sink (default: warnings and errors to stderr). Thread-safe. An empty sink
// restores the default.
void SetLogSink(LogSink sink);

// Redacts, then hands the line to the sink.
void Log(LogLevel level, std::string_view message);

// Masks credentials in free text: "Bearer <token>", "Authorization: ...", JWT-looking
// strings and PEM private key blocks.
std::string Redact(std::string_view text);

}  // namespace pgshift::k8s
