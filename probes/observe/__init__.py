"""What is observed: tasks, threads, timers, descriptors, children, the loop's lag, the heap, the process."""
