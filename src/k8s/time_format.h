// Kubernetes timestamps: metav1.Time ("2024-05-01T12:00:00Z") and metav1.MicroTime
// ("2024-05-01T12:00:00.123456Z"), always UTC.
#pragma once

#include <chrono>
#include <string>

namespace pgshift::k8s {

std::string FormatTime(std::chrono::system_clock::time_point t);
std::string FormatMicroTime(std::chrono::system_clock::time_point t);

}  // namespace pgshift::k8s
