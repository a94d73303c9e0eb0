"""The mine job: frames -> labeled hand crops (label stage), then the similar-hands graph and pairs."""
