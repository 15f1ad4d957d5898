#include <cmath>
#include <cstdio>
#include "common/strings.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <regex>

namespace pgshift {

std::vector<std::string> Split(std::string_view s, char sep, bool skip_empty) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    std::string_view part = s.substr(start, pos == std::string_view::npos ? s.npos : pos - start);
    if (!(skip_empty && part.empty())) out.emplace_back(part);
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

std::string Join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool ParseInt64(std::string_view s, long long* out) {
  s = Trim(s);
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool ParseDouble(std::string_view s, double* out) {
  s = Trim(s);
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

std::string RedactSecrets(std::string_view text) {
  static const std::regex kUri(R"(((?:postgres|postgresql)://[^:/@\s]*):[^@\s]*@)",
                               std::regex::icase);
  static const std::regex kKeyword(R"((^|\s)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+))",
                                   std::regex::icase);
  static const std::regex kQuery(R"(([?&]password=)[^&\s]*)", std::regex::icase);
  // SQL: CREATE/ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...' (pg_dumpall output, server echoes).
  static const std::regex kSqlPassword(R"((PASSWORD\s+)'(?:[^']|'')*')", std::regex::icase);
  std::string s(text);
  s = std::regex_replace(s, kSqlPassword, "$1'*****'");
  s = std::regex_replace(s, kUri, "$1:*****@");
  s = std::regex_replace(s, kQuery, "$1*****");
  s = std::regex_replace(s, kKeyword, "$1$2*****");
  return s;
}

std::string RandomHex(size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  std::string out;
  out.reserve(n);
  while (out.size() < n) {
    unsigned char b = 0;
    urandom.read(reinterpret_cast<char*>(&b), 1);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

std::string FormatBytes(double b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (std::fabs(b) >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f %s", u == 0 ? 0 : 1, b, units[u]);
  return buf;
}

std::string FormatDurationShort(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  // Under 10 s, round up: "ready in ~0 s" while it is not would read as done.
  const long long s = seconds < 10 ? static_cast<long long>(std::ceil(seconds)) : std::llround(seconds);
  char buf[48];
  if (s < 100) {
    snprintf(buf, sizeof buf, "%lld s", s);
  } else if (s < 3600) {
    snprintf(buf, sizeof buf, "%lld min", (s + 30) / 60);
  } else {
    const long long m = (s + 30) / 60;
    snprintf(buf, sizeof buf, "%lld h %lld min", m / 60, m % 60);
  }
  return buf;
}

}  // namespace pgshift
