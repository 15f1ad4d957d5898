// Escaping for text that goes into an HTML page: table and database names, error messages and
// notes are user data. Nothing here knows about migrations.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace pgshift::report {

// Text for an HTML element's content or a quoted attribute value: & < > " ' escaped.
std::string HtmlEscape(std::string_view text);

// JSON safe to place inside <script type="application/json">...</script>: ASCII only, and
// <, > and & written as \u003c, \u003e, \u0026 so no "</script>" or "<!--" can appear.
std::string JsonForScript(const nlohmann::json& value);

// JavaScript or CSS source safe inside <script>/<style>: every "</" of a closing "</script"
// or "</style" becomes "<\/" (the same text in a JS string; the only place it can occur in
// the minified libraries we embed).
std::string InlineSource(std::string_view source);

// Milliseconds since the Unix epoch of an RFC 3339 UTC time as pgshift writes them
// ("2026-11-21T22:37:49.123Z", fraction optional); nullopt for anything else.
std::optional<int64_t> ParseUtcMillis(std::string_view text);

}  // namespace pgshift::report
