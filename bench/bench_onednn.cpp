// Benchmark child for oneDNN: the same ref-CNN as bench_ours.cpp written directly against
// oneDNN (the library LibTorch's convolutions call), the way its own training example
// (cnn_training_f32.cpp) does it, so it shows what oneDNN can do on this machine:
//   - every primitive created once, before the timed steps, and reused;
//   - activations and weights in the layouts oneDNN picks (format_tag::any: blocked
//     nChw8c / nChw16c and OIhw8i8o-style weights), the user's nchw images reordered once
//     a step, nothing else reordered unless a backward primitive asks for another layout;
//   - ReLU fused into the convolution as a post-op; its backward reads that output
//     (eltwise_relu_use_dst_for_bwd), in place;
//   - max pooling with forward_training and its workspace, backward through it;
//   - backward data and backward weights (with bias) for both convolutions and the
//     linear layer, convolution_auto (oneDNN may choose Winograd where it has one);
//   - softmax cross-entropy on the (N, 10) logits and the SGD update (lr 0.05) as
//     plain loops on oneDNN's buffers, in the weights' forward layout.
// Prints the line protocol of bench_util.hpp. Before timing, on the first training
// batch, it computes the loss and all six gradients with our tape from the same
// initial parameters (bench/ref_cnn.hpp, seed 1) and prints both, as
//   check loss <ours> <onednn>
//   check <param> <max |g_ours - g_onednn|> <max |g_ours|>
// The driver (bench.cpp) prints them and flags a relative error above 1e-4.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <dnnl.hpp>
#include <map>
#include <string>
#include <unordered_map>

#include "bench_util.hpp"
#include "ref_cnn.hpp"

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Args = std::unordered_map<int, memory>;

// One primitive and its arguments, run in order.
struct Op {
  dnnl::primitive prim;
  Args args;
};

// A memory of `want`'s layout, filled from `have` by a reorder added to `ops` when the
// layouts differ; `have` itself when they agree.
memory maybe_reorder(const memory& have, const memory::desc& want, const dnnl::engine& eng, std::vector<Op>& ops) {
  if (have.get_desc() == want) return have;
  memory m(want, eng);
  ops.push_back({dnnl::reorder(have, m), {{DNNL_ARG_FROM, have}, {DNNL_ARG_TO, m}}});
  return m;
}

// Reverse: after `ops`, `want` holds `have`'s contents (nothing to add when `have` is
// `want`, or has its layout: the caller then wrote into `want` directly).
void reorder_into(const memory& have, const memory& want, std::vector<Op>& ops) {
  if (have.get_desc() == want.get_desc()) return;
  ops.push_back({dnnl::reorder(have, want), {{DNNL_ARG_FROM, have}, {DNNL_ARG_TO, want}}});
}

void run(std::vector<Op>& ops, dnnl::stream& s) {
  for (Op& op : ops) op.prim.execute(s, op.args);
}

float* ptr(const memory& m) { return static_cast<float*>(m.get_data_handle()); }

// A trainable tensor in the layout the forward primitive chose, with its gradient.
struct Param {
  memory value, grad;  // same layout
  std::size_t size() const { return value.get_desc().get_size() / sizeof(float); }
};

class OneDnnRefCnn {
 public:
  OneDnnRefCnn(std::size_t batch, bool train, bench::RefCnn& init) : N_(static_cast<memory::dim>(batch)), train_(train) {
    const memory::dims x_dims{N_, 1, 28, 28}, a1_dims{N_, 16, 28, 28}, p1_dims{N_, 16, 14, 14};
    const memory::dims a2_dims{N_, 32, 14, 14}, p2_dims{N_, 32, 7, 7}, z_dims{N_, 10};
    const memory::dims k1_dims{16, 1, 5, 5}, k2_dims{32, 16, 5, 5}, w3_dims{10, 32, 7, 7};
    const memory::dims stride{1, 1}, pad{2, 2}, pool_k{2, 2}, pool_s{2, 2}, pool_pad{0, 0};
    const auto fwd = train ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    auto any = [](const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); };

    // The user's images: plain nchw, pointed at each step's batch.
    x_user_ = memory({x_dims, dt::f32, tag::nchw}, eng_, DNNL_MEMORY_NONE);

    // conv + ReLU, pool, as one block (twice).
    dnnl::post_ops relu;
    relu.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr conv_attr;
    conv_attr.set_post_ops(relu);
    auto conv_pd = [&](const memory::desc& src, const memory::dims& k, const memory::dims& dst) {
      const memory::desc b({k[0]}, dt::f32, tag::x);
      return dnnl::convolution_forward::primitive_desc(
          dnnl::convolution_forward::desc(fwd, dnnl::algorithm::convolution_auto, src, any(k), b, any(dst), stride, pad,
                                          pad),
          conv_attr, eng_);
    };
    auto pool_pd = [&](const memory::desc& src, const memory::dims& dst) {
      return dnnl::pooling_forward::primitive_desc(
          dnnl::pooling_forward::desc(fwd, dnnl::algorithm::pooling_max, src, any(dst), pool_s, pool_k, pool_pad,
                                      pool_pad),
          eng_);
    };

    c1_pd_ = conv_pd(any(x_dims), k1_dims, a1_dims);
    x_ = maybe_reorder(x_user_, c1_pd_.src_desc(), eng_, fwd_);
    k1_ = make_param(c1_pd_.weights_desc(), init.k1.value, k1_dims, tag::oihw);
    b1_ = make_param(c1_pd_.bias_desc(), init.b1.value, {16}, tag::x);
    a1_ = memory(c1_pd_.dst_desc(), eng_);
    fwd_.push_back({dnnl::convolution_forward(c1_pd_),
                    {{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, k1_.value}, {DNNL_ARG_BIAS, b1_.value}, {DNNL_ARG_DST, a1_}}});
    p1_pd_ = pool_pd(a1_.get_desc(), p1_dims);
    p1_ = memory(p1_pd_.dst_desc(), eng_);
    Args p1_args{{DNNL_ARG_SRC, a1_}, {DNNL_ARG_DST, p1_}};
    if (train) p1_ws_ = memory(p1_pd_.workspace_desc(), eng_), p1_args[DNNL_ARG_WORKSPACE] = p1_ws_;
    fwd_.push_back({dnnl::pooling_forward(p1_pd_), p1_args});

    c2_pd_ = conv_pd(p1_.get_desc(), k2_dims, a2_dims);
    const memory p1_for_c2 = maybe_reorder(p1_, c2_pd_.src_desc(), eng_, fwd_);
    k2_ = make_param(c2_pd_.weights_desc(), init.k2.value, k2_dims, tag::oihw);
    b2_ = make_param(c2_pd_.bias_desc(), init.b2.value, {32}, tag::x);
    a2_ = memory(c2_pd_.dst_desc(), eng_);
    fwd_.push_back({dnnl::convolution_forward(c2_pd_), {{DNNL_ARG_SRC, p1_for_c2},
                                                        {DNNL_ARG_WEIGHTS, k2_.value},
                                                        {DNNL_ARG_BIAS, b2_.value},
                                                        {DNNL_ARG_DST, a2_}}});
    p2_pd_ = pool_pd(a2_.get_desc(), p2_dims);
    p2_ = memory(p2_pd_.dst_desc(), eng_);
    Args p2_args{{DNNL_ARG_SRC, a2_}, {DNNL_ARG_DST, p2_}};
    if (train) p2_ws_ = memory(p2_pd_.workspace_desc(), eng_), p2_args[DNNL_ARG_WORKSPACE] = p2_ws_;
    fwd_.push_back({dnnl::pooling_forward(p2_pd_), p2_args});

    // Linear 1568 -> 10 on the pooled (N, 32, 7, 7) activations, in their layout.
    fc_pd_ = dnnl::inner_product_forward::primitive_desc(
        dnnl::inner_product_forward::desc(fwd, p2_.get_desc(), any(w3_dims), memory::desc({10}, dt::f32, tag::x),
                                          memory::desc(z_dims, dt::f32, tag::nc)),
        eng_);
    // Ours is w3 (D_in, D_out) = (1568, 10): as (O, C, H, W) that is the layout "ihwo".
    w3_ = make_param(fc_pd_.weights_desc(), init.w3.value, w3_dims, tag::ihwo);
    b3_ = make_param(fc_pd_.bias_desc(), init.b3.value, {10}, tag::x);
    z_ = memory(fc_pd_.dst_desc(), eng_);
    fwd_.push_back({dnnl::inner_product_forward(fc_pd_),
                    {{DNNL_ARG_SRC, p2_}, {DNNL_ARG_WEIGHTS, w3_.value}, {DNNL_ARG_BIAS, b3_.value}, {DNNL_ARG_DST, z_}}});
    if (train) build_backward(p1_for_c2);
  }

  // Forward, and for training: loss, backward, SGD. Returns the mean loss (training) or
  // the first logit (inference).
  float step(const float* images, const std::vector<int>& labels, bool update = true) {
    x_user_.set_data_handle(const_cast<float*>(images));
    run(fwd_, s_);
    s_.wait();
    if (!train_) return ptr(z_)[0];
    const float loss = softmax_cross_entropy(labels);
    run(bwd_, s_);
    s_.wait();
    if (update) {
      for (Param* p : {&k1_, &b1_, &k2_, &b2_, &w3_, &b3_}) {  // value -= lr * grad
        float* v = ptr(p->value);
        const float* g = ptr(p->grad);
        for (std::size_t i = 0, n = p->size(); i < n; ++i) v[i] -= bench::kLr * g[i];
      }
      run(after_update_, s_);  // weights into the layouts backward data reads, if different
      s_.wait();
    }
    return loss;
  }

  // The gradients of the last step in our layouts: k (O,C,KH,KW), w3 (1568, 10).
  ad::Tensor<float> grad(const std::string& name) {
    const std::map<std::string, std::pair<Param*, std::pair<memory::dims, tag>>> where{
        {"k1", {&k1_, {{16, 1, 5, 5}, tag::oihw}}}, {"b1", {&b1_, {{16}, tag::x}}},
        {"k2", {&k2_, {{32, 16, 5, 5}, tag::oihw}}}, {"b2", {&b2_, {{32}, tag::x}}},
        {"w3", {&w3_, {{10, 32, 7, 7}, tag::ihwo}}}, {"b3", {&b3_, {{10}, tag::x}}}};
    const auto& [p, d] = where.at(name);
    ad::Tensor<float> out = ad::Tensor<float>::from_shape({p->size()});
    memory user({d.first, dt::f32, d.second}, eng_, out.data());
    dnnl::reorder(p->grad, user).execute(s_, p->grad, user);
    s_.wait();
    return out;
  }

 private:
  Param make_param(const memory::desc& layout, const ad::Tensor<float>& init, const memory::dims& dims, tag user_tag) {
    Param p{memory(layout, eng_), memory(layout, eng_)};
    std::fill(ptr(p.grad), ptr(p.grad) + p.size(), 0.0f);
    memory user({dims, dt::f32, user_tag}, eng_, const_cast<float*>(init.data()));
    dnnl::reorder(user, p.value).execute(s_, user, p.value);
    s_.wait();
    return p;
  }

  // Backward of conv + ReLU + pool, in reverse; the conv's input gradient only when
  // `want_dsrc` (conv1's input is the images).
  memory conv_block_backward(const dnnl::convolution_forward::primitive_desc& c_pd,
                             const dnnl::pooling_forward::primitive_desc& p_pd, const memory& src, const memory& act,
                             const memory& ws, const memory& d_pooled, Param& k, Param& b, bool want_dsrc) {
    const memory::dims stride{1, 1}, pad{2, 2}, pool_k{2, 2}, pool_s{2, 2}, pool_pad{0, 0};
    auto any = [](const memory& m) { return memory::desc(m.get_desc().dims(), dt::f32, tag::any); };
    // max pool: the gradient goes to each window's winner (the workspace)
    const dnnl::pooling_backward::primitive_desc pb_pd(
        dnnl::pooling_backward::desc(dnnl::algorithm::pooling_max, act.get_desc(), p_pd.dst_desc(), pool_s, pool_k,
                                     pool_pad, pool_pad),
        eng_, p_pd);
    const memory d_pooled_in = maybe_reorder(d_pooled, pb_pd.diff_dst_desc(), eng_, bwd_);
    memory d_act(pb_pd.diff_src_desc(), eng_);
    bwd_.push_back({dnnl::pooling_backward(pb_pd),
                    {{DNNL_ARG_DIFF_DST, d_pooled_in}, {DNNL_ARG_DIFF_SRC, d_act}, {DNNL_ARG_WORKSPACE, ws}}});
    // ReLU, from its output (the conv's fused post-op), in place
    const dnnl::eltwise_forward::primitive_desc relu_hint(
        dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu_use_dst_for_bwd,
                                    act.get_desc(), 0.0f),
        eng_);
    const dnnl::eltwise_backward::primitive_desc rb_pd(
        dnnl::eltwise_backward::desc(dnnl::algorithm::eltwise_relu_use_dst_for_bwd, d_act.get_desc(), act.get_desc(),
                                     0.0f),
        eng_, relu_hint);
    bwd_.push_back({dnnl::eltwise_backward(rb_pd), {{DNNL_ARG_DST, act}, {DNNL_ARG_DIFF_DST, d_act}, {DNNL_ARG_DIFF_SRC, d_act}}});
    // convolution: weights and bias
    const memory::desc any_k(k.value.get_desc().dims(), dt::f32, tag::any);
    const dnnl::convolution_backward_weights::primitive_desc bw_pd(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_auto, any(src), any_k,
                                                 b.value.get_desc(), any(d_act), stride, pad, pad),
        eng_, c_pd);
    // conv1's nchw images: the JIT backward-weights kernel wants them blocked (with
    // nchw oneDNN falls back to its reference loop, 100x slower)
    const memory src_w = maybe_reorder(src, bw_pd.src_desc(), eng_, bwd_);
    const memory d_act_w = maybe_reorder(d_act, bw_pd.diff_dst_desc(), eng_, bwd_);
    memory dk = bw_pd.diff_weights_desc() == k.grad.get_desc() ? k.grad : memory(bw_pd.diff_weights_desc(), eng_);
    bwd_.push_back({dnnl::convolution_backward_weights(bw_pd),
                    {{DNNL_ARG_SRC, src_w}, {DNNL_ARG_DIFF_DST, d_act_w}, {DNNL_ARG_DIFF_WEIGHTS, dk}, {DNNL_ARG_DIFF_BIAS, b.grad}}});
    reorder_into(dk, k.grad, bwd_);
    if (!want_dsrc) return memory();
    // convolution: data
    const dnnl::convolution_backward_data::primitive_desc bd_pd(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_auto, src.get_desc(), any_k,
                                              d_act.get_desc(), stride, pad, pad),
        eng_, c_pd);
    const memory k_for_bd = maybe_reorder(k.value, bd_pd.weights_desc(), eng_, after_update_);
    const memory d_act_d = maybe_reorder(d_act, bd_pd.diff_dst_desc(), eng_, bwd_);
    memory d_src(bd_pd.diff_src_desc(), eng_);
    bwd_.push_back({dnnl::convolution_backward_data(bd_pd),
                    {{DNNL_ARG_DIFF_DST, d_act_d}, {DNNL_ARG_WEIGHTS, k_for_bd}, {DNNL_ARG_DIFF_SRC, d_src}}});
    return d_src;
  }

  void build_backward(const memory& p1_for_c2) {
    // linear: dJ/dz -> dJ/dW3, dJ/db3, dJ/dp2
    dz_ = memory(z_.get_desc(), eng_);
    const memory::desc any_w3(w3_.value.get_desc().dims(), dt::f32, tag::any);
    const dnnl::inner_product_backward_weights::primitive_desc fw_pd(
        dnnl::inner_product_backward_weights::desc(p2_.get_desc(), any_w3, b3_.value.get_desc(), dz_.get_desc()), eng_,
        fc_pd_);
    memory dw3 = fw_pd.diff_weights_desc() == w3_.grad.get_desc() ? w3_.grad : memory(fw_pd.diff_weights_desc(), eng_);
    bwd_.push_back({dnnl::inner_product_backward_weights(fw_pd),
                    {{DNNL_ARG_SRC, p2_}, {DNNL_ARG_DIFF_DST, dz_}, {DNNL_ARG_DIFF_WEIGHTS, dw3}, {DNNL_ARG_DIFF_BIAS, b3_.grad}}});
    reorder_into(dw3, w3_.grad, bwd_);
    const dnnl::inner_product_backward_data::primitive_desc fd_pd(
        dnnl::inner_product_backward_data::desc(p2_.get_desc(), any_w3, dz_.get_desc()), eng_, fc_pd_);
    const memory w3_for_bd = maybe_reorder(w3_.value, fd_pd.weights_desc(), eng_, after_update_);
    const memory dp2(fd_pd.diff_src_desc(), eng_);
    bwd_.push_back({dnnl::inner_product_backward_data(fd_pd),
                    {{DNNL_ARG_DIFF_DST, dz_}, {DNNL_ARG_WEIGHTS, w3_for_bd}, {DNNL_ARG_DIFF_SRC, dp2}}});
    const memory dp1 = conv_block_backward(c2_pd_, p2_pd_, p1_for_c2, a2_, p2_ws_, dp2, k2_, b2_, true);
    conv_block_backward(c1_pd_, p1_pd_, x_, a1_, p1_ws_, dp1, k1_, b1_, false);
    run(after_update_, s_);  // the first step's backward-data weights
    s_.wait();
  }

  // Mean softmax cross-entropy of the logits z_ (N, 10); dz_ = (softmax(z) - onehot) / N.
  float softmax_cross_entropy(const std::vector<int>& labels) {
    const std::size_t N = labels.size(), K = 10;
    const float* z = ptr(z_);
    float* dz = ptr(dz_);
    double total = 0;
    for (std::size_t n = 0; n < N; ++n) {
      const float* zn = z + n * K;
      const float mx = *std::max_element(zn, zn + K);
      float s = 0;
      for (std::size_t k = 0; k < K; ++k) s += std::exp(zn[k] - mx);
      const float lse = mx + std::log(s);
      total += lse - zn[labels[n]];
      for (std::size_t k = 0; k < K; ++k)
        dz[n * K + k] = (std::exp(zn[k] - lse) - (static_cast<int>(k) == labels[n] ? 1.0f : 0.0f)) / static_cast<float>(N);
    }
    return static_cast<float>(total / static_cast<double>(N));
  }

  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream s_{eng_};
  memory::dim N_;
  bool train_;
  std::vector<Op> fwd_, bwd_, after_update_;
  memory x_user_, x_, a1_, p1_, p1_ws_, a2_, p2_, p2_ws_, z_, dz_;
  Param k1_, b1_, k2_, b2_, w3_, b3_;
  dnnl::convolution_forward::primitive_desc c1_pd_, c2_pd_;
  dnnl::pooling_forward::primitive_desc p1_pd_, p2_pd_;
  dnnl::inner_product_forward::primitive_desc fc_pd_;
};

// Our loss and gradients on this batch from the same initial parameters, against
// oneDNN's (one step without the update), as `check` lines.
void check_against_ours(OneDnnRefCnn& net, const ad::Tensor<float>& images, const std::vector<int>& labels) {
  bench::RefCnn ours(1);
  ad::Tape<float> tape;
  const ad::Value loss = ad::softmax_cross_entropy(tape, ours.forward(tape, images), labels);
  tape.backward(loss);
  const float their_loss = net.step(images.data(), labels, /*update=*/false);
  std::printf("check loss %.7g %.7g\n", static_cast<double>(tape.value(loss)()), static_cast<double>(their_loss));
  for (ad::Parameter<float>* p : ours.params()) {
    const ad::Tensor<float> g = net.grad(p->name);
    const float* a = p->grad.data();
    double diff = 0, ref = 0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(a[i] - g.data()[i])));
      ref = std::max(ref, static_cast<double>(std::fabs(a[i])));
    }
    std::printf("check %s %.3g %.3g\n", p->name.c_str(), diff, ref);
  }
}

int run(const bench::ChildOptions& o) {
  omp_set_num_threads(o.threads);  // before the primitives: their blocking depends on it
  const bool train = o.mode == "train";
  bench::Batches data(o.data, train, o.batch);
  bench::RefCnn init(1);
  OneDnnRefCnn net(o.batch, train, init);
  ad::Tensor<float> images;
  std::vector<int> labels;
  if (train) {
    data.next(images, labels);
    check_against_ours(net, images, labels);
  }
  float loss = 0;
  bench::time_blocks(o, [&] {
    data.next(images, labels);
    loss = net.step(images.data(), labels);
  });
  std::printf("loss %.6f\n", static_cast<double>(loss));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(bench::parse_child_options(argc, argv));
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "bench_onednn: oneDNN error %d: %s\n", static_cast<int>(e.status), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_onednn: %s\n", e.what());
    return 1;
  }
}
