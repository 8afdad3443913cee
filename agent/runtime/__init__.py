"""The process around the work: signals and exit statuses, child processes that die with
Charles, helper threads' priority and CPU budget, the newest-value slot threads meet through,
the rate keeper, and Xvfb when there is no screen."""
