Feature: The queen keeps the fleet converged while processes fail

  Background:
    Given a fleet of 1 "smollm2" worker applied with a reconcile interval of 2 seconds and heartbeats every second

  @test001-39
  Scenario: A worker killed mid-stream ends its stream with an error and is replaced
    When a client streams a long answer and the worker is killed mid-stream
    Then the client gets an error event within 2 seconds
    And a new worker serves requests within one reconcile interval of its load time
    And rbee status shows the workers Ready

  @test001-47
  Scenario: A worker frozen mid-stream ends its stream with an error and is killed and replaced
    Given the queen's stream idle timeout is 3 seconds
    When a client streams a long answer and the worker is frozen mid-stream
    Then the client gets a worker_unresponsive error within 5 seconds of the freeze
    And the hive kills the frozen worker and reports why within 20 seconds
    And a new worker serves requests within one reconcile interval of its load time

  @test001-29
  Scenario: A killed hive takes its workers with it and the queen brings both back
    When the hive daemon is killed with SIGKILL
    Then its workers exit within 5 seconds
    And the queen restarts the hive and its worker without any rbee command
    And rbee destroy leaves no rbee process

  Scenario: Restarting the queen while 20 streams run adopts the workers as they are
    When 20 streams run through the queen and the queen is killed and started again
    Then 20 streams started after the restart succeed
    And the worker kept its pid

  Scenario: A corrupt hive.yaml pushed to a running queen is refused
    When a corrupt hive.yaml is applied and pushed to the queen
    Then both are refused with a reason
    And the spec generation and the worker are unchanged

  @test001-26
  Scenario: A target that keeps failing backs off and shows Degraded with its error
    When hive.yaml asks for a worker the hive cannot start
    Then rbee status shows that target Degraded with the hive's error
    And the queen retries it with growing gaps

  @test001-45 @test001-48
  Scenario: An idle worker is parked and the next request starts it again
    Given the model's idle timeout is 3 seconds
    Then the worker is parked and its process gone within 10 seconds
    And a streaming request cold-starts a worker, showing its progress, and succeeds

  @test001-46
  Scenario: A hive that misses 3 heartbeats is taken out of routing and comes back by itself
    Given the hive sends heartbeats to the queen
    When the hive daemon is frozen with SIGSTOP
    Then within 6 seconds the queen logs 3 missed heartbeats and routes nothing to the hive
    When the hive daemon is thawed with SIGCONT
    Then within 6 seconds the hive beats again and its worker is routable, with no rbee command
