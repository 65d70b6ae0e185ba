"""What a person reads: the HTML report and its charts, a sweep's comparison page, terminal progress,
experiment tracking."""
