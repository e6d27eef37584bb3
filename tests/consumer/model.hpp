// The consumer's model: a tiny CNN trained for a few steps on a fixed batch.
#pragma once

#include <string>

struct TrainResult {
  double first_loss = 0, last_loss = 0;
  bool reloaded_same_logits = false;
};

// Trains `steps` Adam steps, then saves the weights to `weights_path` (safetensors),
// loads them into a fresh model and compares the logits.
TrainResult train_tiny_cnn(int steps, const std::string& weights_path);
