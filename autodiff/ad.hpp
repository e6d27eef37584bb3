// Everything a user needs: the tape, every op family, gradcheck, and the debugging
// tools (printing and drawing the tape, Jacobians, per-node gradcheck, custom ops).
#pragma once

#include "autodiff/custom.hpp"
#include "autodiff/gradcheck.hpp"
#include "autodiff/gradcheck_nodes.hpp"
#include "autodiff/higher_order.hpp"
#include "autodiff/jacobian.hpp"
#include "autodiff/print.hpp"
#include "autodiff/tape.hpp"
#include "ops/activation.hpp"
#include "ops/blas.hpp"
#include "ops/conv2d.hpp"
#include "ops/conv_transpose2d.hpp"
#include "ops/dropout.hpp"
#include "ops/elementwise.hpp"
#include "ops/flatten.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/pool.hpp"
#include "ops/shape.hpp"
#include "ops/unary.hpp"
