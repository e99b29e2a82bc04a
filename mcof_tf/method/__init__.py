"""The method's pure functions (numpy in, numpy out): seeds, label rules, saliency-guided refinement."""
