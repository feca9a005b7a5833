"""Neural fields: encodings, the RGB (nerfacto-style) field, proposal density nets, the feature
field, scene contraction, sampling, volume rendering and losses. Plain PyTorch, ROS-free."""
