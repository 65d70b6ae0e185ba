"""What a person reads: the HTML report and its charts, terminal progress, experiment tracking."""
