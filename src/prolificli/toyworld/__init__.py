"""The toy world: procedural coloured shapes with known ground truth, a tiny diffusion prior
trained on their renders, and a scorer; the offline stand-in for Stable Diffusion and CLIP."""
