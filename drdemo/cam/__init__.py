"""Heat maps: the CAM methods on offer, a map for one photo (explain), and scoring maps against lesion masks."""
