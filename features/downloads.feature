Feature: fetching a model shows its progress, and a failed fetch says why and changes nothing
  A real local hive and a local server that speaks the Hugging Face Hub's protocol: one model served slowly,
  one whose file breaks off halfway and then is unavailable.

  Background:
    Given a fleet applied on the local hive whose hive.yaml also names models "slowpoke" and "broken" from the Hub

  @test001-16
  Scenario: rbee models pull shows the download's bytes and speed, then the catalog has it
    When I run rbee models pull "slowpoke"
    Then rbee exits with 0
    And stdout shows the download at a quarter, a half and three quarters of 2.4 MB, with a speed
    And the hive's catalog has "slowpoke" of 2.4 MB

  @test001-17 @test001-37
  Scenario: a download that keeps failing exits 1 with the hive's sentence and leaves the catalog as it was
    When I run rbee models pull "broken"
    Then rbee exits with 1
    And stderr says pulling "broken" failed, with the hive's reason
    And the hive's catalog does not have "broken"
