"""From an uploaded file to a checked photo: decoding, the fundus measures, the image check and the gate."""
