// Bundled by tests/test_compat_analytics_next.py into one IIFE: the real analytics-next from npm,
// exposed as window.AnalyticsBrowser so the test page can load it with inline settings (no CDN).
import { AnalyticsBrowser } from '@segment/analytics-next';

window.AnalyticsBrowser = AnalyticsBrowser;
