// Small string helpers shared by every layer.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace pgshift {

std::vector<std::string> Split(std::string_view s, char sep, bool skip_empty = false);
std::string Join(const std::vector<std::string>& parts, std::string_view sep);
std::string_view Trim(std::string_view s);
std::string ToLower(std::string_view s);
bool ParseInt64(std::string_view s, long long* out);
// The same for a decimal number ("12.5", "-3e2"); false on anything else, the empty string too.
bool ParseDouble(std::string_view s, double* out);
// Hides passwords in conninfo strings, URIs and "password: x"-like text, for logs and errors.
std::string RedactSecrets(std::string_view text);
// "512 B", "1.5 kB", "142.6 MB" (powers of 1024), for people.
std::string FormatBytes(double bytes);
// A rough duration for estimates: "40 s", "7 min", "2 h 5 min".
std::string FormatDurationShort(double seconds);
// Random lowercase hex of `n` characters from the OS CSPRNG.
std::string RandomHex(size_t n);

}  // namespace pgshift
