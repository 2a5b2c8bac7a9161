// Where the CPU operator's time goes: per-phase clocks, off unless asked for.
//
// The benchmark (benchmarks/cpu_phases.py) switches them on through the op
// cpu_phase_times(enable), runs the operator, and reads back, per phase, the
// nanoseconds all threads spent in it.  Switched off (the default) a sweep reads
// one atomic flag per task and does nothing else, so the timed benchmark and every
// user run the same code as before.
//
// A task of a sweep (the body of one at::parallel_for chunk) keeps a Laps: each
// lap(phase) charges the time since the previous lap (or since the task began) to
// that phase, on this thread; the task adds its sums to the global ones when it
// ends.  The thread-times of the phases, divided by the number of threads, add up
// to the wall time of the sweeps less the time threads wait for each other; the
// operator's calls are timed whole too (kForwardCall, kBackwardCall: allocation,
// dtype and layout conversion of the inputs included) and their sweeps
// (kForwardSweeps, kBackwardSweeps) on the calling thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace ccnet_edu {
namespace phases {

#define CCA_PHASES(X)                                                                   \
  X(kForwardEnergies, "forward: energies Q K^T (rows and columns)")                     \
  X(kForwardSoftmax, "forward: softmax")                                                \
  X(kForwardAggregation, "forward: aggregation A V (rows and columns)")                 \
  X(kForwardLayout, "forward: layout copies (slots <-> dense, value channels-last)")     \
  X(kBackwardGradAttention, "backward: dA = dO V^T (rows and columns)")                 \
  X(kBackwardSoftmax, "backward: softmax backward (dA -> dE, slots <-> dense columns)")  \
  X(kBackwardGradValue, "backward: dV = A^T dO (rows and columns)")                     \
  X(kBackwardGradQueryKey, "backward: dQ = dE K, dK = dE^T Q (rows and columns)")       \
  X(kBackwardLayout, "backward: layout copies (gathers of NCHW columns, NCHW grads)")   \
  X(kForwardSweeps, "forward: wall time of the sweeps (calling thread)")                \
  X(kForwardCall, "forward: wall time of the call (calling thread)")                    \
  X(kBackwardSweeps, "backward: wall time of the sweeps (calling thread)")              \
  X(kBackwardCall, "backward: wall time of the call (calling thread)")

enum Phase : int {
#define CCA_PHASE_ENUM(name, text) name,
  CCA_PHASES(CCA_PHASE_ENUM)
#undef CCA_PHASE_ENUM
      kCount
};

inline constexpr std::array<const char*, kCount> kNames = {
#define CCA_PHASE_NAME(name, text) text,
    CCA_PHASES(CCA_PHASE_NAME)
#undef CCA_PHASE_NAME
};

inline std::atomic<bool>& enabled() {
  static std::atomic<bool> on{false};
  return on;
}

inline std::array<std::atomic<int64_t>, kCount>& totals() {
  static std::array<std::atomic<int64_t>, kCount> sums{};
  return sums;
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One task's clock (see above).
class Laps {
 public:
  Laps() : on_(enabled().load(std::memory_order_relaxed)) {
    if (on_) last_ = now_ns();
  }
  Laps(const Laps&) = delete;
  Laps& operator=(const Laps&) = delete;
  ~Laps() {
    if (!on_) return;
    for (int p = 0; p < kCount; ++p)
      if (sums_[p] != 0) totals()[p].fetch_add(sums_[p], std::memory_order_relaxed);
  }
  // The time since the last lap goes to `phase`.
  void lap(Phase phase) {
    if (!on_) return;
    const int64_t t = now_ns();
    sums_[phase] += t - last_;
    last_ = t;
  }

 private:
  bool on_;
  int64_t last_ = 0;
  std::array<int64_t, kCount> sums_{};
};

}  // namespace phases
}  // namespace ccnet_edu
