// The files a report page inlines, embedded into the pgshift binary at build time (CMake
// generates the definitions from src/report/embed.cmake; see CMakeLists.txt): uPlot's
// minified script and style from the npm package pinned in src/report/vendor.txt, and this
// folder's report.js and report.css.
#pragma once

#include "report/report.h"

namespace pgshift::report {

Assets EmbeddedAssets();

}  // namespace pgshift::report
