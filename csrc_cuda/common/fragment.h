// Views of sm80 m16n8k16 accumulator fragments. The accumulator of one atom holds, per thread,
// values (col pair v0, row half v1): rows lane/4 and lane/4 + 8, columns 2*(lane%4) + {0, 1}.
#pragma once

#include <cute/tensor.hpp>

namespace fa {

// ((2, 2), MMA_M, MMA_N) -> ((2, MMA_M), (2, MMA_N)): rows and columns of one thread's values,
// so that row reductions are loops over the second mode.
template <class Layout>
CUTE_HOST_DEVICE auto rowcol_layout(Layout const& acc) {
  using namespace cute;
  static_assert(decltype(rank(acc))::value == 3);
  static_assert(decltype(size<0>(acc))::value == 4);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<2>(acc)));
}

// Accumulator ((2, 2), MMA_M, MMA_N) of S = Q K^T -> A operand ((2, 2, 2), MMA_M, MMA_N / 2) of
// O = P V: two neighbouring n8 accumulator tiles form one k16 A tile, value for value, so P never
// leaves registers.
template <class Layout>
CUTE_HOST_DEVICE auto acc_as_operand_a(Layout const& acc) {
  using namespace cute;
  static_assert(decltype(size<2>(acc))::value % 2 == 0);
  auto n_split = logical_divide(get<2>(acc), Int<2>{});  // (2, MMA_N / 2)
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0>(n_split)), get<1>(acc),
                     get<1>(n_split));
}

}  // namespace fa
