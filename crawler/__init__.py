"""sitesearch crawler: a Scrapy project (robots.txt → sitemaps → frontier → fetch → raw store)."""
