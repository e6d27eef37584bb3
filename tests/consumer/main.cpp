// tape-autodiff from another project: train a tiny CNN, check that the loss falls and
// that its weights survive a safetensors round trip. Prints "consumer: OK" on success.
#include <fmt/format.h>

#include <cstdio>

#include "model.hpp"

int main(int argc, char** argv) {
  const TrainResult r = train_tiny_cnn(20, argc > 1 ? argv[1] : "consumer_weights.safetensors");
  fmt::print("consumer: loss {:.4f} -> {:.4f} after 20 steps; weights reload to the same logits: {}\n", r.first_loss,
             r.last_loss, r.reloaded_same_logits);
  if (!(r.last_loss < 0.8 * r.first_loss) || !r.reloaded_same_logits) {
    fmt::print("consumer: FAILED\n");
    return 1;
  }
  fmt::print("consumer: OK\n");
  return 0;
}
