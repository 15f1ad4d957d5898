#include "pg/lsn.h"

#include <cinttypes>
#include <cstdio>

namespace pgshift::pg {

Result<Lsn> Lsn::Parse(const std::string& text) {
  unsigned int hi = 0, lo = 0;
  char extra = 0;
  if (std::sscanf(text.c_str(), "%X/%X%c", &hi, &lo, &extra) != 2) {
    return Status::InvalidArgument("not an LSN: '" + text + "'");
  }
  return Lsn{(static_cast<uint64_t>(hi) << 32) | lo};
}

std::string Lsn::ToString() const {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(value >> 32),
                static_cast<unsigned>(value & 0xffffffffu));
  return buf;
}

}  // namespace pgshift::pg
