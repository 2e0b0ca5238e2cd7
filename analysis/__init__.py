"""Copy suppression and negative heads, recovery statistics, plotly figures, HTML report."""
