// PostgreSQL log sequence numbers ("16/B374D848").
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace pgshift::pg {

struct Lsn {
  uint64_t value = 0;
  static Result<Lsn> Parse(const std::string& text);
  std::string ToString() const;
  auto operator<=>(const Lsn&) const = default;
};

}  // namespace pgshift::pg
